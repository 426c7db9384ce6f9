//! Markdown of model answers to safe HTML, on the server: pulldown-cmark renders, ammonia
//! sanitises, and code blocks get a copy button.
//!
//! Model output is untrusted input. Raw HTML in the Markdown is turned into text before
//! rendering, so `<script>` or `<img onerror=…>` written by the model shows as the characters
//! it wrote; ammonia then cleans the result as a second line of defence (links open in a new
//! tab with `rel="noopener noreferrer nofollow"`, only http, https and mailto URLs survive). Rendering
//! here rather than in the browser keeps the page free of a JS Markdown library and lets
//! HTMX swap finished HTML.

use std::sync::LazyLock;

use pulldown_cmark::{html, Event, Options, Parser};

/// The sanitiser, built once: its tag and URL tables are the same for every answer.
static CLEANER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::default();
    builder
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .link_rel(Some("noopener noreferrer nofollow"))
        // A link in an answer opens beside the chat, not in its place.
        .set_tag_attribute_value("a", "target", "_blank");
    builder
});

/// The copy button placed before every code block; `chat.js` copies the `<pre>` beside it.
const COPY_BUTTON: &str = r#"<div class="code"><button type="button" class="copy" aria-label="Copy code">Copy</button><pre>"#;

/// `text` (Markdown, possibly half-streamed) as sanitised HTML.
pub fn render_markdown(text: &str) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let events = Parser::new_ext(text, options).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut rendered = String::with_capacity(text.len() * 3 / 2);
    html::push_html(&mut rendered, events);
    let clean = CLEANER.clean(&rendered).to_string();
    // After ammonia, `<pre>` can only be a real tag: text `<pre>` is escaped as `&lt;pre&gt;`.
    clean
        .replace("<pre>", COPY_BUTTON)
        .replace("</pre>", "</pre></div>")
}

#[cfg(test)]
mod tests {
    use super::render_markdown;

    #[test]
    fn lists_tables_and_code_render() {
        let html = render_markdown(
            "- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```rust\nfn main() {}\n```",
        );
        assert!(html.contains("<li>one</li>"), "{html}");
        assert!(html.contains("<table>"), "{html}");
        assert!(
            html.contains(r#"<button type="button" class="copy""#),
            "{html}"
        );
        assert!(html.contains("fn main() {}"), "{html}");
        assert!(html.ends_with("</pre></div>\n"), "{html}");
    }

    #[test]
    fn raw_html_shows_as_text() {
        let cases = [
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "hello <img src=x onerror=alert(1)> world",
            "<a href=\"javascript:alert(1)\">x</a>",
            "<iframe src=\"https://example.com\"></iframe>",
        ];
        for case in cases {
            let html = render_markdown(case);
            assert!(!html.contains("<script"), "{case} → {html}");
            assert!(!html.contains("<img"), "{case} → {html}");
            assert!(!html.contains("<iframe"), "{case} → {html}");
            assert!(!html.contains("<a "), "{case} → {html}");
            assert!(html.contains("&lt;"), "{case} should show as text: {html}");
        }
    }

    #[test]
    fn markdown_links_are_cleaned() {
        let html = render_markdown("[x](javascript:alert(1)) [y](https://example.com)");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains(r#"href="https://example.com""#), "{html}");
        assert!(html.contains("noopener"), "{html}");
    }

    #[test]
    fn links_open_in_a_new_tab_without_opener_or_referrer() {
        let html =
            render_markdown("see [the docs](https://example.com/docs) and <https://a.example>");
        for link in html.split("<a ").skip(1) {
            let tag = &link[..link.find('>').expect("tag end")];
            assert!(tag.contains(r#"target="_blank""#), "{html}");
            assert!(tag.contains(r#"rel="noopener noreferrer"#), "{html}");
        }
        assert_eq!(html.matches("<a ").count(), 2, "{html}");
    }

    #[test]
    fn text_that_looks_like_pre_is_not_a_code_block() {
        let html = render_markdown("a `<pre>` tag");
        assert!(!html.contains("class=\"copy\""), "{html}");
    }
}
