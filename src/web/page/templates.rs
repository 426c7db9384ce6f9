//! The page's MiniJinja templates, compiled into the binary and parsed once, and the one
//! call that renders them. Every template is `*.html`, so MiniJinja escapes what model or
//! user wrote.

use minijinja::{Environment, Value};

/// A template's name and its source, the file of that name in `src/web/templates/`.
macro_rules! template {
    ($name:literal) => {
        ($name, include_str!(concat!("../templates/", $name)))
    };
}

/// Every template the page renders.
const SOURCES: &[(&str, &str)] = &[
    template!("page.html"),
    template!("badge.html"),
    template!("not_found.html"),
    template!("messages.html"),
    template!("user_message.html"),
    template!("exchange.html"),
    template!("thinking.html"),
    template!("thinking_live.html"),
    template!("versions.html"),
    template!("tool_call.html"),
    template!("tool_result.html"),
    template!("done.html"),
    template!("failed.html"),
    template!("sidebar.html"),
    template!("conversation_item.html"),
    template!("rename.html"),
    template!("settings.html"),
    template!("thinking_toggle.html"),
    template!("meter.html"),
    template!("edit.html"),
    template!("notice.html"),
    template!("context_full.html"),
    template!("login.html"),
    template!("refused.html"),
    template!("loading.html"),
];

/// The page's templates, parsed once.
fn templates() -> &'static Environment<'static> {
    static ENV: std::sync::LazyLock<Environment<'static>> = std::sync::LazyLock::new(|| {
        let mut env = Environment::new();
        for &(name, source) in SOURCES {
            if let Err(err) = env.add_template(name, source) {
                tracing::error!("template {name} does not parse: {err:#}");
            }
        }
        env
    });
    &ENV
}

/// Renders the template `name` with `ctx`.
pub(crate) fn render(name: &str, ctx: Value) -> Result<String, minijinja::Error> {
    templates().get_template(name)?.render(ctx)
}
