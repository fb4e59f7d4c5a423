//! The saga's lanes: which events of a batch may be handled side by side.

use chronicle_schemas::Envelope;

use super::{Core, SagaError};

/// Splits a batch into lanes: two events share a lane when they concern the same order, the
/// same item or the same coupon, and keep their stream order in it. So stock and coupon
/// redemptions still go first come, first served, as when the saga handled one event at a
/// time; only work that cannot meet runs side by side.
pub(super) async fn lanes<'a>(
    core: &Core,
    events: &'a [Envelope],
) -> Result<Vec<Vec<&'a Envelope>>, SagaError> {
    let mut keys = Vec::with_capacity(events.len());
    for envelope in events {
        keys.push(core.touches(envelope).await?);
    }
    Ok(lanes_by_keys(&keys)
        .into_iter()
        .map(|lane| lane.into_iter().map(|i| &events[i]).collect())
        .collect())
}

/// Lanes of positions `0..keys.len()`: positions that share a key, directly or through
/// others, are in one lane, in ascending order.
fn lanes_by_keys(keys: &[Vec<String>]) -> Vec<Vec<usize>> {
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut lane_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (index, touched) in keys.iter().enumerate() {
        let mut joined: Vec<usize> = touched
            .iter()
            .filter_map(|k| lane_of.get(k.as_str()))
            .copied()
            .collect();
        joined.sort_unstable();
        joined.dedup();
        let lane = match joined.split_first() {
            None => {
                lanes.push(Vec::new());
                lanes.len() - 1
            }
            Some((&into, others)) => {
                // The position links lanes: they become one, in order.
                for &other in others {
                    let moved = std::mem::take(&mut lanes[other]);
                    lanes[into].extend(moved);
                }
                lanes[into].sort_unstable();
                for lane in lane_of.values_mut() {
                    if others.contains(lane) {
                        *lane = into;
                    }
                }
                into
            }
        };
        lanes[lane].push(index);
        for key in touched {
            lane_of.insert(key, lane);
        }
    }
    lanes.retain(|lane| !lane.is_empty());
    lanes
}

#[cfg(test)]
mod tests {
    use super::lanes_by_keys;

    fn keys(of: &[&[&str]]) -> Vec<Vec<String>> {
        of.iter()
            .map(|k| k.iter().map(|s| (*s).to_owned()).collect())
            .collect()
    }

    #[test]
    fn orders_that_share_nothing_get_a_lane_each() {
        let lanes = lanes_by_keys(&keys(&[&["o1", "a"], &["o2", "b"], &["o3", "c"]]));
        assert_eq!(lanes, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn events_of_one_order_item_or_coupon_share_a_lane_in_stream_order() {
        let lanes = lanes_by_keys(&keys(&[
            &["o1", "a"],
            &["o2", "b"],
            &["o3", "a"],
            &["o1"],
            &["o4", "coupon"],
            &["o5", "c", "coupon"],
        ]));
        assert_eq!(lanes, vec![vec![0, 2, 3], vec![1], vec![4, 5]]);
    }

    #[test]
    fn an_event_that_links_two_lanes_merges_them_in_stream_order() {
        let lanes = lanes_by_keys(&keys(&[
            &["o1", "a"],
            &["o2", "b"],
            &["o3", "a", "b"],
            &["o4", "b"],
            &["o5", "d"],
        ]));
        assert_eq!(lanes, vec![vec![0, 1, 2, 3], vec![4]]);
    }

    #[test]
    fn every_position_is_in_exactly_one_lane() {
        // A chain that links every lane at the end.
        let mut of: Vec<Vec<String>> = (0..50).map(|i| vec![format!("k{i}")]).collect();
        of.push((0..50).map(|i| format!("k{i}")).collect());
        let lanes = lanes_by_keys(&of);
        assert_eq!(lanes, vec![(0..51).collect::<Vec<_>>()]);
    }
}
