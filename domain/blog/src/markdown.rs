//! Markdown to HTML that is safe to put in a page.

use std::sync::OnceLock;

use pulldown_cmark::{html, Options, Parser};

fn sanitizer() -> &'static ammonia::Builder<'static> {
    static BUILDER: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    BUILDER.get_or_init(|| {
        let mut builder = ammonia::Builder::default();
        builder
            .url_schemes(["http", "https", "mailto"].into_iter().collect())
            .link_rel(Some("noopener noreferrer nofollow"));
        builder
    })
}

/// Renders CommonMark (with tables and strikethrough) and sanitizes the result: no
/// `<script>`, `<style>` or `<iframe>`, no event-handler attributes, links only to http,
/// https and mailto (with `rel="noopener noreferrer nofollow"`). Raw HTML in the source is
/// kept only where it is harmless. Deterministic: the same Markdown gives the same HTML.
pub fn render(markdown: &str) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    let mut unsafe_html = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut unsafe_html, Parser::new_ext(markdown, options));
    sanitizer().clean(&unsafe_html).to_string()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markdown_becomes_html() {
        assert_eq!(
            render("# Title\n\nSome *emphasis* and `code`."),
            "<h1>Title</h1>\n<p>Some <em>emphasis</em> and <code>code</code>.</p>\n"
        );
    }

    #[test]
    fn script_tags_and_event_handlers_never_survive() {
        for hostile in [
            "<script>alert(1)</script>",
            "before <script src=\"https://evil.example/x.js\"></script> after",
            "<img src=\"x.png\" onerror=\"alert(1)\">",
            "<a href=\"#\" onclick=\"steal()\">click</a>",
            "<div onmouseover='x()'>hover</div>",
            "<svg onload=alert(1)>",
            "<iframe src=\"https://evil.example\"></iframe>",
            "<SCRIPT>alert(1)</SCRIPT>",
        ] {
            let html = render(hostile).to_lowercase();
            assert!(!html.contains("<script"), "{hostile} -> {html}");
            assert!(!html.contains("onerror"), "{hostile} -> {html}");
            assert!(!html.contains("onclick"), "{hostile} -> {html}");
            assert!(!html.contains("onmouseover"), "{hostile} -> {html}");
            assert!(!html.contains("onload"), "{hostile} -> {html}");
            assert!(!html.contains("<iframe"), "{hostile} -> {html}");
        }
    }

    #[test]
    fn only_safe_links_remain_and_they_cannot_reach_the_opener() {
        let html =
            render("[a](javascript:alert(1)) [b](https://example.com) [c](data:text/html,x)");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("data:"), "{html}");
        assert!(
            html.contains(
                "<a href=\"https://example.com\" rel=\"noopener noreferrer nofollow\">b</a>"
            ),
            "{html}"
        );
    }
}
