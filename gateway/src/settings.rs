//! Each context's settings, kept by the host by their type: the gateway's own configuration
//! names no context, a context's routes read their own group
//! (`state.config.contexts.get::<FilesConfig>()`), and whoever builds the gateway sets each
//! group it configures ([`ContextSettings::set`]).

use std::{
    any::{type_name, Any, TypeId},
    collections::HashMap,
    fmt,
};

/// A group of one context's settings.
pub trait ContextSetting: Any + Clone + Default + fmt::Debug + Send + Sync {}

impl<T: Any + Clone + Default + fmt::Debug + Send + Sync> ContextSetting for T {}

/// One group, with what cloning and showing it needs once its type is erased.
struct Group {
    value: Box<dyn Any + Send + Sync>,
    clone: fn(&(dyn Any + Send + Sync)) -> Box<dyn Any + Send + Sync>,
    debug: fn(&(dyn Any + Send + Sync), &mut fmt::Formatter<'_>) -> fmt::Result,
}

impl Group {
    fn new<T: ContextSetting>(value: T) -> Self {
        Self {
            value: Box::new(value),
            clone: |value| Box::new(downcast::<T>(value).clone()),
            debug: |value, f| fmt::Debug::fmt(downcast::<T>(value), f),
        }
    }
}

fn downcast<T: ContextSetting>(value: &(dyn Any + Send + Sync)) -> &T {
    value
        .downcast_ref()
        .expect("a group is kept under its own type")
}

/// Every context's settings group, one per type. Every context the gateway hosts has its
/// group from the start (its defaults, until set).
#[derive(Default)]
pub struct ContextSettings(HashMap<TypeId, Group>);

impl ContextSettings {
    /// Sets the group `T` (the defaults are replaced).
    pub fn set<T: ContextSetting>(&mut self, value: T) -> &mut Self {
        self.0.insert(TypeId::of::<T>(), Group::new(value));
        self
    }

    /// Sets every group `other` has (each replaces this one's of its type).
    pub fn extend(&mut self, other: Self) -> &mut Self {
        self.0.extend(other.0);
        self
    }

    /// Declares the group `T`: its defaults, unless it is set already.
    pub fn declare<T: ContextSetting>(&mut self) -> &mut Self {
        self.get_mut::<T>();
        self
    }

    /// The group `T`.
    ///
    /// # Panics
    /// When no context the gateway hosts declares `T` (a group is there from the start
    /// for every declared one).
    pub fn get<T: ContextSetting>(&self) -> &T {
        let group = self
            .0
            .get(&TypeId::of::<T>())
            .unwrap_or_else(|| panic!("no context declares the settings {}", type_name::<T>()));
        downcast(group.value.as_ref())
    }

    /// The group `T` to change in place (its defaults first, when not set yet).
    pub fn get_mut<T: ContextSetting>(&mut self) -> &mut T {
        self.0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Group::new(T::default()))
            .value
            .downcast_mut()
            .expect("a group is kept under its own type")
    }
}

impl Clone for ContextSettings {
    fn clone(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(id, group)| {
                    let value = (group.clone)(group.value.as_ref());
                    (
                        *id,
                        Group {
                            value,
                            clone: group.clone,
                            debug: group.debug,
                        },
                    )
                })
                .collect(),
        )
    }
}

impl fmt::Debug for ContextSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Shown<'a>(&'a Group);
        impl fmt::Debug for Shown<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                (self.0.debug)(self.0.value.as_ref(), f)
            }
        }
        f.debug_list().entries(self.0.values().map(Shown)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Limits {
        most: u32,
    }

    #[test]
    fn a_group_is_kept_by_its_type_and_copied_with_the_rest() {
        let mut settings = ContextSettings::default();
        settings.get_mut::<Limits>().most = 3;
        let copy = settings.clone();
        settings.set(Limits { most: 5 });
        assert_eq!(copy.get::<Limits>(), &Limits { most: 3 });
        assert_eq!(settings.get::<Limits>(), &Limits { most: 5 });
        assert_eq!(format!("{copy:?}"), "[Limits { most: 3 }]");
    }

    #[test]
    fn extending_sets_the_others_groups_and_keeps_the_rest() {
        #[derive(Debug, Clone, Default, PartialEq)]
        struct Retention(u32);
        let mut settings = ContextSettings::default();
        settings.set(Limits { most: 1 }).set(Retention(7));
        let mut read = ContextSettings::default();
        read.set(Limits { most: 9 });
        settings.extend(read);
        assert_eq!(settings.get::<Limits>(), &Limits { most: 9 });
        assert_eq!(settings.get::<Retention>(), &Retention(7));
    }

    #[test]
    #[should_panic(expected = "no context declares the settings")]
    fn a_group_no_context_declares_is_a_mistake_said_by_name() {
        ContextSettings::default().get::<Limits>();
    }
}
