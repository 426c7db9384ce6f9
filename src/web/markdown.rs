//! Markdown of model answers to safe HTML, on the server: pulldown-cmark renders, ammonia
//! sanitises, code blocks get a language label, a copy button and syntax highlighting, and
//! math is marked for the page's KaTeX.
//!
//! Model output is untrusted input. Raw HTML in the Markdown is turned into text before
//! rendering, so `<script>` or `<img onerror=…>` written by the model shows as the characters
//! it wrote; ammonia then cleans the result as a second line of defence (links open in a new
//! tab with `rel="noopener noreferrer nofollow"`, only http, https and mailto URLs survive). Rendering
//! here rather than in the browser keeps the page free of a JS Markdown library and lets
//! HTMX swap finished HTML.
//!
//! Highlighting is syntect's, as `class` attributes (`hl-` and the scope's parts) that
//! `chat.css` colours for both themes: no inline style, so the page's CSP stays strict. A
//! fenced block still open (an answer being streamed) is shown plain until its fence closes.
//! Math (`$…$` inline, `$$…$$` display, pulldown-cmark's rules: no space inside either
//! dollar, none followed by a digit, so `$5 and $10` stay text) is kept verbatim, escaped, in
//! `<span class="math math-inline">` or `math-display`, which `chat.js` hands to KaTeX;
//! Markdown escapes (`\,`) do not apply inside it.

use std::sync::LazyLock;

use pulldown_cmark::{html, CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use syntect::html::{ClassStyle, ClassedHTMLGenerator};
use syntect::parsing::SyntaxSet;
use syntect::util::LinesWithEndings;

/// The sanitiser, built once: its tag and URL tables are the same for every answer.
static CLEANER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::default();
    builder
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .link_rel(Some("noopener noreferrer nofollow"))
        // A link in an answer opens beside the chat, not in its place.
        .set_tag_attribute_value("a", "target", "_blank")
        // Classes and buttons only come from this module: the model's own tags are text.
        .add_tags(["button"])
        .add_tag_attributes("button", ["type", "class", "aria-label"])
        .add_tag_attributes("div", ["class"])
        .add_tag_attributes("span", ["class"]);
    builder
});

/// syntect's bundled grammars (about 75 languages), read once on the first code block; each
/// grammar's regexes compile on its first use.
static SYNTAXES: LazyLock<SyntaxSet> = LazyLock::new(SyntaxSet::load_defaults_newlines);

/// Scope `keyword.control.rust` becomes `class="hl-keyword hl-control hl-rust"`; the prefix
/// keeps scope names such as `meta` apart from the page's own classes.
const CLASS_STYLE: ClassStyle = ClassStyle::SpacedPrefixed { prefix: "hl-" };

/// Larger code blocks are shown plain: highlighting runs on every render of a streamed
/// answer, and a long block would slow each one for little gain.
const MAX_HIGHLIGHTED_BYTES: usize = 64 * 1024;

/// `text` (Markdown, possibly half-streamed) as sanitised HTML.
pub fn render_markdown(text: &str) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_MATH;
    let mut block: Option<CodeBlock> = None;
    let events = Parser::new_ext(text, options)
        .into_offset_iter()
        .filter_map(|(event, range)| {
            if let (Event::Text(code), Some(open)) = (&event, block.as_mut()) {
                open.code.push_str(code);
                return None;
            }
            match event {
                Event::Start(Tag::CodeBlock(kind)) => {
                    block = Some(CodeBlock::open(&kind, &text[range]));
                    None
                }
                Event::End(TagEnd::CodeBlock) => {
                    block.take().map(|done| Event::Html(done.html().into()))
                }
                Event::Html(raw) | Event::InlineHtml(raw) => Some(Event::Text(raw)),
                // The usual rule pulldown-cmark leaves out: a digit after the closing `$`
                // makes it a price ("$5$10"), not math.
                Event::InlineMath(_)
                    if text[range.end..].starts_with(|c: char| c.is_ascii_digit()) =>
                {
                    Some(Event::Text(text[range].to_owned().into()))
                }
                other => Some(other),
            }
        });
    let mut rendered = String::with_capacity(text.len() * 3 / 2);
    html::push_html(&mut rendered, events);
    CLEANER.clean(&rendered).to_string()
}

/// A code block being collected from the parser's events.
struct CodeBlock {
    /// The info string's first word (`rust` of "```rust ignore"), shown as the label.
    language: Option<String>,
    /// Its closing fence is written (an indented block is always whole).
    closed: bool,
    code: String,
}

impl CodeBlock {
    /// A block of `kind` whose Markdown, fences included, is `source`.
    fn open(kind: &CodeBlockKind<'_>, source: &str) -> Self {
        let (language, closed) = match kind {
            CodeBlockKind::Fenced(info) => (
                info.split(|c: char| c.is_whitespace() || c == ',')
                    .next()
                    .filter(|word| !word.is_empty())
                    .map(str::to_owned),
                fence_closed(source),
            ),
            CodeBlockKind::Indented => (None, true),
        };
        Self {
            language,
            closed,
            code: String::new(),
        }
    }

    /// The block as the page shows it: a head with the language and a copy button (which
    /// `chat.js` wires to the code's text), then the code, highlighted once the block is
    /// closed and its language known.
    fn html(self) -> String {
        let highlighted = match (&self.language, self.closed) {
            (Some(language), true) => highlight(language, &self.code),
            _ => None,
        };
        let body = highlighted.unwrap_or_else(|| escape(&self.code));
        let label = self
            .language
            .as_deref()
            .map_or_else(String::new, |language| {
                format!(r#"<span class="code-lang">{}</span>"#, escape(language))
            });
        format!(
            "<div class=\"code\"><div class=\"code-head\">{label}<button type=\"button\" \
             class=\"copy\" aria-label=\"Copy code\">Copy</button></div>\
             <pre><code>{body}</code></pre></div>\n"
        )
    }
}

/// Whether a fenced block's `source` ends with a fence that closes it: as long as the
/// opening one, of the same character. Quote markers and indentation before either are
/// skipped (a block inside a list or a quote).
fn fence_closed(source: &str) -> bool {
    fn strip(line: &str) -> &str {
        line.trim_start_matches([' ', '\t', '>']).trim_end()
    }
    let mut lines = source.lines().map(strip);
    let Some(opening) = lines.next() else {
        return false;
    };
    let Some(marker) = opening.chars().next().filter(|c| matches!(c, '`' | '~')) else {
        return false;
    };
    let run = |line: &str| line.chars().take_while(|c| *c == marker).count();
    let length = run(opening);
    lines.next_back().is_some_and(|closing| {
        let n = run(closing);
        n >= length && n == closing.chars().count()
    })
}

/// `code` highlighted as `language`; `None` for a language syntect does not know (or a
/// block too long), which is then shown plain.
fn highlight(language: &str, code: &str) -> Option<String> {
    if code.len() > MAX_HIGHLIGHTED_BYTES {
        return None;
    }
    let syntaxes: &SyntaxSet = &SYNTAXES;
    let syntax = syntaxes.find_syntax_by_token(language)?;
    let mut html = ClassedHTMLGenerator::new_with_class_style(syntax, syntaxes, CLASS_STYLE);
    for line in LinesWithEndings::from(code) {
        html.parse_html_for_line_which_includes_newline(line).ok()?;
    }
    Some(html.finalize())
}

/// `text` safe as HTML text or a quoted attribute value.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{fence_closed, render_markdown};

    /// The text of `html` without its tags, entities decoded as far as the tests need.
    fn text_of(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
    }

    /// The `<code>` of the first code block in `html`.
    fn code_of(html: &str) -> &str {
        let start = html.find("<pre><code>").expect("a code block") + "<pre><code>".len();
        &html[start..start + html[start..].find("</code></pre>").expect("its end")]
    }

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
        assert_eq!(text_of(code_of(&html)), "fn main() {}\n");
        assert!(html.ends_with("</pre></div>\n"), "{html}");
    }

    #[test]
    fn code_blocks_are_highlighted_with_their_language() {
        let source = "let s = \"<b>&\"; // note\nfn main() {}\n";
        let html = render_markdown(&format!("```rust\n{source}```"));
        assert!(
            html.contains(r#"<div class="code-head"><span class="code-lang">rust</span><button"#),
            "{html}"
        );
        let code = code_of(&html);
        assert!(
            code.contains(r#"<span class="hl-source hl-rust">"#),
            "{code}"
        );
        assert!(code.contains(r#"class="hl-comment"#), "{code}");
        assert!(code.contains(r#"class="hl-string"#), "{code}");
        assert!(!code.contains("<b>"), "the code's text is escaped: {code}");
        assert_eq!(text_of(code), source, "the code is all there, unchanged");
    }

    #[test]
    fn unknown_or_absent_languages_show_plain_code() {
        let html = render_markdown("```no-such-language\n<b>x</b>\n```");
        assert!(
            html.contains(r#"<span class="code-lang">no-such-language</span>"#),
            "{html}"
        );
        assert_eq!(code_of(&html), "&lt;b&gt;x&lt;/b&gt;\n");
        let html = render_markdown("```\nplain\n```\n\n    indented\n");
        assert!(!html.contains("code-lang"), "{html}");
        assert!(!html.contains("hl-"), "{html}");
        assert_eq!(html.matches(r#"class="copy""#).count(), 2, "{html}");
        let label = render_markdown("```<img src=x onerror=alert(1)>\nx\n```");
        assert!(!label.contains("<img"), "{label}");
    }

    #[test]
    fn a_code_block_still_open_is_highlighted_once_it_closes() {
        let open = render_markdown("Look:\n\n```python\nprint(1)\n");
        assert!(
            open.contains(r#"<span class="code-lang">python</span>"#),
            "{open}"
        );
        assert_eq!(code_of(&open), "print(1)\n", "plain while open");
        let closed = render_markdown("Look:\n\n```python\nprint(1)\n```\n");
        assert!(code_of(&closed).contains("hl-python"), "{closed}");
        assert_eq!(text_of(code_of(&closed)), "print(1)\n");
    }

    #[test]
    fn closing_fences_are_recognised() {
        assert!(fence_closed("```rust\nx\n```"));
        assert!(fence_closed("````\nx\n`````\n"));
        assert!(fence_closed("~~~\nx\n~~~  \n"));
        assert!(fence_closed("```\n```"));
        assert!(!fence_closed("```rust\nx\n"));
        assert!(!fence_closed("```rust"));
        assert!(
            !fence_closed("````\nx\n```\n"),
            "a shorter fence does not close"
        );
        assert!(!fence_closed("```\nx\n~~~\n"), "nor another character");
        assert!(!fence_closed("```\n``` not a fence\n"));
        assert!(fence_closed("```sh\n  ls\n  ```\n"), "in a list item");
        assert!(fence_closed("> ```sh\n> ls\n> ```\n"), "in a quote");
        let in_list = render_markdown("- step:\n\n  ```rust\n  let a = 1;\n  ```\n- next");
        assert!(code_of(&in_list).contains("hl-rust"), "{in_list}");
    }

    #[test]
    fn math_is_marked_and_kept_verbatim() {
        let html = render_markdown(r"Area: $$\int_0^1 x\,dx$$ and $a\,b < c$ too.");
        assert!(
            html.contains(r#"<span class="math math-display">\int_0^1 x\,dx</span>"#),
            "`\\,` survives: {html}"
        );
        assert!(
            html.contains(r#"<span class="math math-inline">a\,b &lt; c</span>"#),
            "{html}"
        );
        let block = render_markdown("$$\n\\frac{1}{2} \\cdot \\{x\\}\n$$");
        assert!(block.contains(r"\frac{1}{2} \cdot \{x\}"), "{block}");
        assert!(block.contains("math-display"), "{block}");
    }

    #[test]
    fn prices_and_code_are_not_math() {
        for text in [
            "It costs $5 and $10.",
            "From $5 to $10 dollars",
            "$ 5 and 6 $",
            "between $x $ and y",
            "pay $5$10",
        ] {
            let html = render_markdown(text);
            assert!(!html.contains("math"), "{text} → {html}");
            assert!(html.contains('$'), "{text} → {html}");
        }
        let html =
            render_markdown("Run `echo $HOME$` or:\n\n```sh\necho $PATH $HOME$\n```\n\n    $a$\n");
        assert!(!html.contains("math"), "{html}");
        assert!(html.contains("$HOME$"), "{html}");
        assert!(html.contains("$a$"), "{html}");
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
