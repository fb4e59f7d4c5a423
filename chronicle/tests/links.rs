//! The README and `docs/` link only inside the repository, and every relative link finds
//! its file.

use std::path::{Path, PathBuf};

fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    pages.extend(chronicle_tests::files_under(&root.join("docs"), ".md"));
    pages
}

/// The targets of `[text](target)` links in `markdown`.
fn links(markdown: &str) -> Vec<&str> {
    markdown
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &markdown[at + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect()
}

#[test]
fn every_page_links_inside_the_repository_and_each_link_finds_its_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let root = root.canonicalize().unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages(&root) {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(&root).unwrap().display().to_string();
        if text.contains("../shared") {
            broken.push(format!("{name}: names ../shared, outside the repository"));
        }
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() {
                continue;
            }
            checked += 1;
            let path = page.parent().unwrap().join(file);
            match path.canonicalize() {
                Ok(found) if found.starts_with(&root) => {}
                Ok(_) => broken.push(format!("{name}: {target} is outside the repository")),
                Err(_) => broken.push(format!("{name}: {target} does not exist")),
            }
        }
    }
    assert!(checked > 20, "only {checked} links checked");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
