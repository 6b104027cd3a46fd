//! [`TemplateSet`]: every template of a run, compiled once, in two strict
//! handlebars registries (HTML-escaping for `*.email.*` files, plain for SMS,
//! push and inline subjects/titles), with locale fallback and a render call
//! that returns the text and the tracked links it made.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use handlebars::{Context, Handlebars, RenderErrorReason};
use serde_json::Value;

use crate::error::{Position, RenderError, TemplateError};
use crate::helpers::{self, CollectGuard, HelperFailure, LinkContext, TrackedLink};
use crate::locale::Variants;
use crate::paths::TemplateReads;

/// Extension of template files.
const TEMPLATE_EXTENSION: &str = "hbs";

/// Marker in a file name that makes it an HTML email body.
const EMAIL_MARKER: &str = ".email.";

/// How deep `load` follows directories (guards against symlink loops).
const MAX_DEPTH: usize = 32;

/// What the variable of a `MissingVariable` is called when handlebars does not say.
const UNNAMED_VARIABLE: &str = "(value looked up by a helper)";

/// A rendered message body and the links it tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text: HTML for email bodies, plain otherwise.
    pub text: String,
    /// The distinct links `track` made, in index order.
    pub links: Vec<TrackedLink>,
}

/// The compiled templates of a run.
#[derive(Debug)]
pub struct TemplateSet {
    /// Email bodies: HTML-escaped output.
    html: Handlebars<'static>,
    /// SMS and push bodies: output as is.
    plain: Handlebars<'static>,
    /// Subjects and titles from campaign config: output as is, own namespace.
    inline: Handlebars<'static>,
    /// Locale variants of file templates.
    variants: Variants,
    /// Names of file templates, sorted.
    names: Vec<String>,
}

impl Default for TemplateSet {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether a template name is an HTML email body (its file name contains `.email.`).
pub fn is_html_template(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    file.contains(EMAIL_MARKER)
}

/// A strict registry with herald's helpers and the given escaping.
fn registry(escape_html: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    if !escape_html {
        hb.register_escape_fn(handlebars::no_escape);
    }
    helpers::register_all(&mut hb);
    hb
}

impl TemplateSet {
    /// An empty set (add inline templates with [`TemplateSet::register_inline`]).
    pub fn new() -> Self {
        Self {
            html: registry(true),
            plain: registry(false),
            inline: registry(false),
            variants: Variants::default(),
            names: Vec::new(),
        }
    }

    /// Compiles every `**/*.hbs` below `dir`, named by its path relative to `dir` with `/`.
    ///
    /// Files and directories whose name starts with `.` are skipped. Every
    /// broken file is reported (as [`TemplateError::Many`] when there are several).
    pub fn load(dir: &Path) -> Result<TemplateSet, TemplateError> {
        let mut files = Vec::new();
        collect_files(dir, "", 0, &mut files)?;
        files.sort();
        let mut set = Self::new();
        let mut errors = Vec::new();
        for name in files {
            let path = dir.join(&name);
            match fs::read_to_string(&path) {
                Ok(text) => {
                    if let Err(e) = set.add_file(&name, &text, &path.display().to_string()) {
                        errors.push(e);
                    }
                }
                Err(source) => errors.push(TemplateError::Io { path, source }),
            }
        }
        set.finish(errors)
    }

    /// Compiles `(name, text)` pairs as if they were files of those names (for tests and previews).
    pub fn from_strings(templates: &[(&str, &str)]) -> Result<TemplateSet, TemplateError> {
        let mut set = Self::new();
        let mut names: Vec<_> = templates.to_vec();
        names.sort_by_key(|(n, _)| *n);
        let errors = names
            .iter()
            .filter_map(|(name, text)| set.add_file(name, text, name).err())
            .collect();
        set.finish(errors)
    }

    fn finish(mut self, mut errors: Vec<TemplateError>) -> Result<Self, TemplateError> {
        self.names.sort();
        for registry in [&self.html, &self.plain] {
            errors.extend(
                partial_cycles(registry)
                    .into_iter()
                    .map(TemplateError::PartialCycle),
            );
        }
        match errors.len() {
            0 => Ok(self),
            1 => Err(errors.remove(0)),
            _ => Err(TemplateError::Many(errors)),
        }
    }

    fn add_file(&mut self, name: &str, text: &str, file: &str) -> Result<(), TemplateError> {
        let registry = if is_html_template(name) {
            &mut self.html
        } else {
            &mut self.plain
        };
        compile(registry, name, text, file)?;
        self.variants
            .add(name)
            .map_err(|first| TemplateError::DuplicateVariant {
                first,
                second: name.to_owned(),
            })?;
        self.names.push(name.to_owned());
        Ok(())
    }

    /// Compiles a template given as a string in config (a subject, a title): plain, no escaping.
    pub fn register_inline(&mut self, name: &str, text: &str) -> Result<(), TemplateError> {
        compile(&mut self.inline, name, text, name)?;
        match partial_cycles(&self.inline).into_iter().next() {
            Some(ring) => {
                // Refused, so that no render can reach it.
                self.inline.unregister_template(name);
                Err(TemplateError::PartialCycle(ring))
            }
            None => Ok(()),
        }
    }

    /// The names of the file templates (locale variants included), sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Whether a file template of exactly this name is loaded.
    pub fn contains(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// The template to use for `name` and a contact's locale: exact locale, then its language, then `name`.
    pub fn resolve<'a>(&'a self, name: &'a str, locale: Option<&str>) -> &'a str {
        locale
            .and_then(|l| self.variants.pick(name, l))
            .unwrap_or(name)
    }

    /// The personalisation file template `name` or one of its locale variants
    /// reads, with the partials they include (nothing for an unknown name).
    pub fn reads(&self, name: &str) -> TemplateReads {
        let registry = if is_html_template(name) {
            &self.html
        } else {
            &self.plain
        };
        let names = std::iter::once(name).chain(self.variants.of(name));
        reads_in(registry, names)
    }

    /// The same as [`TemplateSet::reads`] for an inline template.
    pub fn inline_reads(&self, name: &str) -> TemplateReads {
        reads_in(&self.inline, std::iter::once(name))
    }

    /// Renders file template `name` (or its variant for `locale`) with `data`.
    ///
    /// `links` signs the `track` links for one message; without it `track`
    /// writes the destination itself (previews) and still lists it.
    pub fn render(
        &self,
        name: &str,
        locale: Option<&str>,
        data: &Value,
        links: Option<&LinkContext>,
    ) -> Result<Rendered, RenderError> {
        self.render_data(name, locale, &RenderData::new(data.clone()), links)
    }

    /// [`TemplateSet::render`] with data prepared once for several templates.
    pub fn render_data(
        &self,
        name: &str,
        locale: Option<&str>,
        data: &RenderData,
        links: Option<&LinkContext>,
    ) -> Result<Rendered, RenderError> {
        let resolved = self.resolve(name, locale);
        let registry = if is_html_template(resolved) {
            &self.html
        } else {
            &self.plain
        };
        render_in(registry, resolved, data, links)
    }

    /// Renders an inline template registered with [`TemplateSet::register_inline`].
    pub fn render_inline(
        &self,
        name: &str,
        data: &Value,
        links: Option<&LinkContext>,
    ) -> Result<Rendered, RenderError> {
        self.render_inline_data(name, &RenderData::new(data.clone()), links)
    }

    /// [`TemplateSet::render_inline`] with data prepared once for several templates.
    pub fn render_inline_data(
        &self,
        name: &str,
        data: &RenderData,
        links: Option<&LinkContext>,
    ) -> Result<Rendered, RenderError> {
        render_in(&self.inline, name, data, links)
    }
}

/// Every ring of templates in `registry` that include one another by name, each
/// once, as `[a, b, a]` starting at its first name in order.
fn partial_cycles(registry: &Handlebars<'static>) -> Vec<Vec<String>> {
    let includes: BTreeMap<&str, Vec<String>> = registry
        .get_templates()
        .iter()
        .map(|(name, t)| {
            let mut r = TemplateReads::default();
            r.add(t);
            (name.as_str(), r.partials.into_iter().collect())
        })
        .collect();
    let mut rings = BTreeSet::new();
    // Depth first along the includes; a name already on the path closes a ring.
    // A template whose includes were all walked is not walked again.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for start in includes.keys() {
        if done.contains(start) {
            continue;
        }
        let mut path: Vec<&str> = vec![start];
        let mut stack = vec![includes[start].iter()];
        while let Some(next) = stack.last_mut() {
            match next.next() {
                Some(name) => {
                    if let Some(i) = path.iter().position(|p| p == name) {
                        let mut ring: Vec<String> =
                            path[i..].iter().map(|p| p.to_string()).collect();
                        let first = (0..ring.len()).min_by_key(|&k| &ring[k]).unwrap_or(0);
                        ring.rotate_left(first);
                        ring.push(ring[0].clone());
                        rings.insert(ring);
                    } else if let Some((name, more)) = includes.get_key_value(name.as_str())
                        && !done.contains(name)
                    {
                        path.push(name);
                        stack.push(more.iter());
                    }
                }
                None => {
                    stack.pop();
                    if let Some(finished) = path.pop() {
                        done.insert(finished);
                    }
                }
            }
        }
    }
    rings.into_iter().collect()
}

/// What templates `names` of `registry` read, following the partials they
/// include (each template once, so a partial that includes itself ends).
fn reads_in<'a>(
    registry: &Handlebars<'static>,
    names: impl Iterator<Item = &'a str>,
) -> TemplateReads {
    let mut out = TemplateReads::default();
    let mut todo: Vec<String> = names.map(str::to_owned).collect();
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(t) = registry.get_template(&name) {
            let mut r = TemplateReads::default();
            r.add(t);
            todo.extend(std::mem::take(&mut r.partials));
            out.extend(r);
        }
    }
    out
}

/// Compiles one template into `registry`, turning handlebars' error into ours.
fn compile(
    registry: &mut Handlebars<'static>,
    name: &str,
    text: &str,
    file: &str,
) -> Result<(), TemplateError> {
    registry.register_template_string(name, text).map_err(|e| {
        let at = e.pos().map(|(line, col)| Position { line, col });
        let mut reason = e.reason().to_string();
        // pest reports an unclosed block as a grammar list at the very end.
        if reason.contains("helper_block_end") && at.is_some_and(|p| at_end(text, p)) {
            reason.push_str(" (is a {{#block}} left unclosed?)");
        }
        TemplateError::Syntax {
            file: file.to_owned(),
            at,
            reason,
            source_text: text.to_owned(),
        }
    })
}

/// Whether `p` is at (or past) the end of `text`.
fn at_end(text: &str, p: Position) -> bool {
    let lines = text.split('\n').count();
    let last = text.rsplit('\n').next().unwrap_or_default().chars().count();
    p.line > lines || (p.line == lines && p.col > last)
}

/// Appends the `.hbs` files below `dir/prefix` to `out`, as `/`-separated relative names.
fn collect_files(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<String>,
) -> Result<(), TemplateError> {
    let here = if prefix.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(prefix)
    };
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| TemplateError::Io { path, source }
    };
    for entry in fs::read_dir(&here).map_err(io(&here))? {
        let entry = entry.map_err(io(&here))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            return Err(TemplateError::NonUtf8Path { path });
        };
        if file_name.starts_with('.') {
            continue;
        }
        let name = if prefix.is_empty() {
            file_name.to_owned()
        } else {
            format!("{prefix}/{file_name}")
        };
        // Follows symlinks; MAX_DEPTH stops a loop.
        let meta = fs::metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                collect_files(dir, &name, depth + 1, out)?;
            }
        } else if path.extension().is_some_and(|e| e == TEMPLATE_EXTENSION) {
            out.push(name);
        }
    }
    Ok(())
}

/// Template data ready to render: its null object members removed (null
/// renders as missing), once for every template of a message.
pub struct RenderData(Context);

impl RenderData {
    /// `data`, without its null object members.
    pub fn new(mut data: Value) -> Self {
        strip_nulls(&mut data);
        Self(Context::from(data))
    }
}

/// Removes the object members of `v` that are null, at every depth.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Renders `name` of `registry`, collecting the links `track` makes.
fn render_in(
    registry: &Handlebars<'static>,
    name: &str,
    data: &RenderData,
    links: Option<&LinkContext>,
) -> Result<Rendered, RenderError> {
    if !registry.has_template(name) {
        return Err(RenderError::NotFound {
            template: name.to_owned(),
        });
    }
    let guard = CollectGuard::begin(links);
    let text = registry
        .render_with_context(name, &data.0)
        .map_err(|e| map_error(&e, name))?;
    Ok(Rendered {
        text,
        links: guard.finish(),
    })
}

/// Our error for handlebars' `e`, raised while rendering `name`.
fn map_error(e: &handlebars::RenderError, name: &str) -> RenderError {
    let template = e.template_name.clone().unwrap_or_else(|| name.to_owned());
    let at = Position::from_parts(e.line_no, e.column_no);
    let failed = |message: String| RenderError::Failed {
        template: template.clone(),
        message,
        at,
    };
    match e.reason() {
        RenderErrorReason::MissingVariable(path) => RenderError::MissingVariable {
            variable: path.clone().unwrap_or_else(|| UNNAMED_VARIABLE.to_owned()),
            template,
            at,
        },
        RenderErrorReason::TemplateNotFound(t) => RenderError::NotFound {
            template: t.clone(),
        },
        RenderErrorReason::NestedError(inner) => match inner.downcast_ref::<HelperFailure>() {
            Some(HelperFailure::InvalidLink(url)) => RenderError::InvalidLink {
                template,
                url: url.clone(),
                at,
            },
            _ => failed(inner.to_string()),
        },
        RenderErrorReason::HelperNotFound(h) => failed(format!("unknown helper `{h}`")),
        RenderErrorReason::PartialNotFound(p) => failed(format!("partial `{p}` not found")),
        other => failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_domain::token::TokenSigner;
    use serde_json::json;

    fn set(templates: &[(&str, &str)]) -> TemplateSet {
        TemplateSet::from_strings(templates).unwrap()
    }

    fn data() -> Value {
        json!({
            "contact": {
                "external_id": "c1",
                "email": "ann@example.com",
                "phone": null,
                "attrs": {"first_name": "Ann", "bio": "<b>Tom & \"Jerry\"</b>", "tier": "gold", "visits": 7, "empty": ""}
            },
            "top": {"order_placed": {"sku": "TEA-1"}}
        })
    }

    fn ctx(short: bool) -> LinkContext {
        LinkContext {
            message_id: 42,
            public_url: "https://t.example.com/".into(),
            signer: TokenSigner::new(b"secret"),
            short_links: short,
        }
    }

    fn render(s: &TemplateSet, name: &str) -> Result<Rendered, RenderError> {
        s.render(name, None, &data(), None)
    }

    #[test]
    fn email_escapes_html_and_sms_does_not() {
        let s = set(&[
            ("w/d.email.hbs", "<p>{{contact.attrs.bio}}</p>"),
            ("w/d.sms.hbs", "{{contact.attrs.bio}}"),
            ("w/d.push.hbs", "{{contact.attrs.bio}}"),
        ]);
        assert_eq!(
            render(&s, "w/d.email.hbs").unwrap().text,
            "<p>&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt;</p>"
        );
        assert_eq!(
            render(&s, "w/d.sms.hbs").unwrap().text,
            "<b>Tom & \"Jerry\"</b>"
        );
        assert_eq!(
            render(&s, "w/d.push.hbs").unwrap().text,
            "<b>Tom & \"Jerry\"</b>"
        );
    }

    #[test]
    fn inline_templates_are_plain_and_separate_from_files() {
        let mut s = set(&[("subject", "file {{contact.attrs.first_name}}")]);
        s.register_inline(
            "subject",
            "{{contact.attrs.first_name}}, {{top.order_placed.sku}} & more",
        )
        .unwrap();
        let r = s.render_inline("subject", &data(), None).unwrap();
        assert_eq!(r.text, "Ann, TEA-1 & more");
        assert_eq!(render(&s, "subject").unwrap().text, "file Ann");
        assert!(matches!(
            s.render_inline("nope", &data(), None),
            Err(RenderError::NotFound { .. })
        ));
        let e = s.register_inline("bad", "{{#if x}}").unwrap_err();
        assert!(e.to_string().starts_with("bad:"), "{e}");
    }

    #[test]
    fn locale_fallback_is_exact_then_language_then_plain() {
        let s = set(&[
            ("w/d.sms.hbs", "plain"),
            ("w/d.sms.zh.hbs", "zh"),
            ("w/d.sms.zh-CN.hbs", "zh-CN"),
            ("w/d.email.hbs", "<p>plain</p>"),
            ("w/d.email.fr.hbs", "<p>{{contact.attrs.bio}}</p>"),
        ]);
        let text =
            |locale: Option<&str>| s.render("w/d.sms.hbs", locale, &data(), None).unwrap().text;
        assert_eq!(text(Some("zh-CN")), "zh-CN");
        assert_eq!(text(Some("zh_cn")), "zh-CN");
        assert_eq!(text(Some("ZH-TW")), "zh");
        assert_eq!(text(Some("zh")), "zh");
        assert_eq!(text(Some("en-US")), "plain");
        assert_eq!(text(None), "plain");
        assert_eq!(
            s.resolve("w/d.sms.hbs", Some("zh-Hans-CN")),
            "w/d.sms.zh.hbs"
        );
        assert_eq!(s.resolve("w/x.sms.hbs", Some("zh")), "w/x.sms.hbs");
        // An email variant is still an email: escaped.
        let fr = s
            .render("w/d.email.hbs", Some("fr-CA"), &data(), None)
            .unwrap();
        assert!(fr.text.contains("&lt;b&gt;"), "{}", fr.text);
    }

    #[test]
    fn duplicate_locale_variants_are_refused() {
        let e = TemplateSet::from_strings(&[("d.sms.zh-CN.hbs", "a"), ("d.sms.zh_cn.hbs", "b")])
            .unwrap_err();
        assert!(matches!(e, TemplateError::DuplicateVariant { .. }), "{e}");
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_template_variable_and_position() {
        let s = set(&[(
            "winback/discount.email.hbs",
            "<p>\nHello\n    {{contact.attrs.nickname}}</p>",
        )]);
        let e = render(&s, "winback/discount.email.hbs").unwrap_err();
        assert_eq!(
            e.to_string(),
            "template winback/discount.email.hbs: variable `contact.attrs.nickname` is missing (line 3, col 5)"
        );
    }

    #[test]
    fn null_counts_as_missing() {
        let s = set(&[
            ("a.sms.hbs", "{{contact.phone}}"),
            ("b.sms.hbs", "{{default contact.phone \"none\"}}"),
        ]);
        let e = render(&s, "a.sms.hbs").unwrap_err();
        assert!(
            matches!(&e, RenderError::MissingVariable { variable, .. } if variable == "contact.phone"),
            "{e}"
        );
        assert_eq!(render(&s, "b.sms.hbs").unwrap().text, "none");
    }

    #[test]
    fn missing_in_triple_stash_each_with_and_partials_is_an_error() {
        let s = set(&[
            ("a.sms.hbs", "{{{contact.attrs.x}}}"),
            ("b.sms.hbs", "{{#each contact.attrs.x}}{{this}}{{/each}}"),
            ("c.sms.hbs", "{{#with contact.attrs.x}}{{this}}{{/with}}"),
            ("d.sms.hbs", "{{> part.sms.hbs}}"),
            ("part.sms.hbs", "\n {{contact.attrs.x}}"),
        ]);
        for name in ["a.sms.hbs", "b.sms.hbs", "c.sms.hbs"] {
            let e = render(&s, name).unwrap_err();
            assert!(
                matches!(&e, RenderError::MissingVariable { variable, template, .. } if variable == "contact.attrs.x" && template == name),
                "{name}: {e}"
            );
        }
        let e = render(&s, "d.sms.hbs").unwrap_err();
        assert_eq!(
            e.to_string(),
            "template part.sms.hbs: variable `contact.attrs.x` is missing (line 2, col 2)"
        );
    }

    #[test]
    fn if_on_a_missing_path_is_false_but_output_stays_strict() {
        let s = set(&[
            (
                "a.sms.hbs",
                "{{#if contact.attrs.missing}}yes{{else}}no{{/if}}",
            ),
            (
                "b.sms.hbs",
                "{{#unless contact.attrs.missing}}no{{/unless}}",
            ),
            (
                "c.sms.hbs",
                "{{#if contact.attrs.first_name}}{{contact.attrs.missing}}{{/if}}",
            ),
            (
                "d.sms.hbs",
                "{{#if (eq contact.attrs.missing \"gold\")}}y{{else}}n{{/if}}",
            ),
            (
                "e.sms.hbs",
                "{{#if (ne contact.attrs.missing \"gold\")}}y{{else}}n{{/if}}",
            ),
            (
                "f.sms.hbs",
                "{{#if (not contact.attrs.missing)}}y{{else}}n{{/if}}",
            ),
            (
                "g.sms.hbs",
                "{{#if (eq contact.attrs.tier \"gold\")}}y{{else}}n{{/if}}",
            ),
            (
                "h.sms.hbs",
                "{{#if (gt contact.attrs.visits 5)}}y{{else}}n{{/if}}",
            ),
            (
                "i.sms.hbs",
                "{{#if (lte contact.attrs.missing 5)}}y{{else}}n{{/if}}",
            ),
            (
                "j.sms.hbs",
                "{{#eq contact.attrs.tier \"gold\"}}y{{else}}n{{/eq}}",
            ),
        ]);
        let text = |n: &str| render(&s, n).unwrap().text;
        assert_eq!(text("a.sms.hbs"), "no");
        assert_eq!(text("b.sms.hbs"), "no");
        assert!(matches!(
            render(&s, "c.sms.hbs").unwrap_err(),
            RenderError::MissingVariable { variable, .. } if variable == "contact.attrs.missing"
        ));
        assert_eq!(text("d.sms.hbs"), "n");
        assert_eq!(text("e.sms.hbs"), "n");
        assert_eq!(text("f.sms.hbs"), "y");
        assert_eq!(text("g.sms.hbs"), "y");
        assert_eq!(text("h.sms.hbs"), "y");
        assert_eq!(text("i.sms.hbs"), "n");
        assert_eq!(text("j.sms.hbs"), "y");
    }

    #[test]
    fn default_fills_missing_null_and_empty_values_only() {
        let s = set(&[
            (
                "a.sms.hbs",
                "Hi {{default contact.attrs.nickname \"friend\"}}",
            ),
            (
                "b.sms.hbs",
                "Hi {{default contact.attrs.first_name \"friend\"}}",
            ),
            ("c.sms.hbs", "Hi {{default contact.attrs.empty \"friend\"}}"),
            ("d.sms.hbs", "{{default contact.attrs.visits 0}}"),
            (
                "e.sms.hbs",
                "{{default contact.attrs.nickname contact.attrs.other}}",
            ),
            ("f.sms.hbs", "{{default contact.attrs.nickname}}"),
            (
                "g.email.hbs",
                "{{default contact.attrs.nickname \"<friend>\"}}",
            ),
            (
                "h.sms.hbs",
                "{{default contact.attrs.a (default contact.attrs.b \"x\")}}",
            ),
        ]);
        let text = |n: &str| render(&s, n).unwrap().text;
        assert_eq!(text("a.sms.hbs"), "Hi friend");
        assert_eq!(text("b.sms.hbs"), "Hi Ann");
        assert_eq!(text("c.sms.hbs"), "Hi friend");
        assert_eq!(text("d.sms.hbs"), "7");
        assert_eq!(text("g.email.hbs"), "&lt;friend&gt;");
        assert_eq!(text("h.sms.hbs"), "x");
        assert!(matches!(
            render(&s, "e.sms.hbs").unwrap_err(),
            RenderError::MissingVariable { variable, .. } if variable == "contact.attrs.other"
        ));
        assert!(matches!(
            render(&s, "f.sms.hbs").unwrap_err(),
            RenderError::Failed { .. }
        ));
    }

    #[test]
    fn track_signs_a_click_link_per_distinct_url() {
        let s = set(&[(
            "d.email.hbs",
            "<a href=\"{{track \"https://shop.example.com/a?x=1&y=2\"}}\">a</a>\
             <a href=\"{{track \"https://shop.example.com/b\"}}\">b</a>\
             <a href=\"{{track \"https://shop.example.com/a?x=1&y=2\"}}\">a</a>",
        )]);
        let c = ctx(false);
        let r = s.render("d.email.hbs", None, &data(), Some(&c)).unwrap();
        assert_eq!(r.links.len(), 2);
        assert_eq!(r.links[0].url, "https://shop.example.com/a?x=1&y=2");
        assert_eq!(r.links[1].url, "https://shop.example.com/b");
        assert_eq!(r.links[1].index, 1);
        assert!(r.links.iter().all(|l| l.short_code.is_none()));
        let hrefs: Vec<&str> = r
            .text
            .split("href=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        assert_eq!(hrefs.len(), 3);
        assert_eq!(hrefs[0], hrefs[2]);
        for (href, want) in hrefs.iter().zip([0u16, 1, 0]) {
            let token = href.strip_prefix("https://t.example.com/c/").unwrap();
            let claims = c.signer.verify_link(token).unwrap();
            assert_eq!(claims.message_id, 42);
            assert_eq!(claims.link, want);
            assert_eq!(claims.url, r.links[usize::from(want)].url);
        }
    }

    #[test]
    fn track_in_sms_makes_short_links_with_random_codes() {
        let s = set(&[(
            "d.sms.hbs",
            "A {{track \"https://x.example/a\"}} B {{track \"https://x.example/b\"}} A {{track \"https://x.example/a\"}}",
        )]);
        let r = s
            .render("d.sms.hbs", None, &data(), Some(&ctx(true)))
            .unwrap();
        assert_eq!(r.links.len(), 2);
        let codes: Vec<&str> = r
            .links
            .iter()
            .map(|l| l.short_code.as_deref().unwrap())
            .collect();
        for code in &codes {
            assert_eq!(code.len(), 8);
            assert!(code.chars().all(|c| c.is_ascii_alphanumeric()));
        }
        assert_ne!(codes[0], codes[1]);
        assert_eq!(
            r.text,
            format!(
                "A https://t.example.com/s/{a} B https://t.example.com/s/{b} A https://t.example.com/s/{a}",
                a = codes[0],
                b = codes[1]
            )
        );
    }

    #[test]
    fn track_without_a_message_writes_the_url_and_still_lists_it() {
        let s = set(&[("d.email.hbs", "{{track \"https://x.example/?a=1&b=2\"}}")]);
        let r = render(&s, "d.email.hbs").unwrap();
        assert_eq!(r.text, "https://x.example/?a&#x3D;1&amp;b&#x3D;2");
        assert_eq!(r.links[0].url, "https://x.example/?a=1&b=2");
    }

    #[test]
    fn links_do_not_leak_between_renders() {
        let s = set(&[
            ("a.sms.hbs", "{{track \"https://x.example/a\"}}"),
            ("b.sms.hbs", "none"),
        ]);
        assert_eq!(render(&s, "a.sms.hbs").unwrap().links.len(), 1);
        assert!(render(&s, "b.sms.hbs").unwrap().links.is_empty());
        assert_eq!(render(&s, "a.sms.hbs").unwrap().links[0].index, 0);
    }

    #[test]
    fn track_refuses_other_schemes_and_missing_urls() {
        let s = set(&[
            ("a.sms.hbs", "{{track \"javascript:alert(1)\"}}"),
            ("b.sms.hbs", "{{track contact.attrs.url}}"),
            ("c.sms.hbs", "{{track contact.attrs.visits}}"),
        ]);
        let e = render(&s, "a.sms.hbs").unwrap_err();
        assert!(
            matches!(&e, RenderError::InvalidLink { url, .. } if url == "javascript:alert(1)"),
            "{e}"
        );
        assert!(e.to_string().contains("a.sms.hbs"));
        let e = render(&s, "b.sms.hbs").unwrap_err();
        assert!(
            matches!(&e, RenderError::MissingVariable { variable, .. } if variable == "contact.attrs.url"),
            "{e}"
        );
        assert!(matches!(
            render(&s, "c.sms.hbs").unwrap_err(),
            RenderError::InvalidLink { .. }
        ));
    }

    #[test]
    fn unknown_templates_and_helpers_are_errors() {
        let s = set(&[("a.sms.hbs", "{{trak \"https://x\"}}")]);
        assert!(matches!(
            render(&s, "zzz.sms.hbs"),
            Err(RenderError::NotFound { .. })
        ));
        let e = render(&s, "a.sms.hbs").unwrap_err();
        assert!(e.to_string().contains("unknown helper `trak`"), "{e}");
    }

    #[test]
    fn a_template_that_does_not_compile_names_file_line_and_column() {
        let e = TemplateSet::from_strings(&[
            ("w/ok.sms.hbs", "fine"),
            ("w/bad.sms.hbs", "line one\n  {{#if x}}open"),
        ])
        .unwrap_err();
        let TemplateError::Syntax { file, at, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(file, "w/bad.sms.hbs");
        let at = at.unwrap();
        assert_eq!(at.line, 2, "{e}");
        assert!(
            e.to_string().ends_with("(is a {{#block}} left unclosed?)"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("w/bad.sms.hbs:2:{}: ", at.col)),
            "{e}"
        );
        let d = e.diagnostic().unwrap();
        assert_eq!(d.file, "w/bad.sms.hbs");
        assert_eq!(d.line_col().0, 2);
    }

    #[test]
    fn load_walks_the_tree_and_reports_every_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("winback/deep")).unwrap();
        fs::write(
            root.join("winback/discount.email.hbs"),
            "<p>{{contact.attrs.first_name}}</p>",
        )
        .unwrap();
        fs::write(
            root.join("winback/discount.sms.hbs"),
            "Hi {{contact.attrs.first_name}}",
        )
        .unwrap();
        fs::write(
            root.join("winback/discount.sms.zh-CN.hbs"),
            "你好 {{contact.attrs.first_name}}",
        )
        .unwrap();
        fs::write(root.join("winback/deep/x.push.hbs"), "push").unwrap();
        fs::write(root.join("winback/notes.txt"), "{{ignored").unwrap();
        fs::write(root.join(".hidden.sms.hbs"), "{{ignored").unwrap();
        let s = TemplateSet::load(root).unwrap();
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            [
                "winback/deep/x.push.hbs",
                "winback/discount.email.hbs",
                "winback/discount.sms.hbs",
                "winback/discount.sms.zh-CN.hbs"
            ]
        );
        assert!(s.contains("winback/discount.sms.hbs"));
        let r = s
            .render("winback/discount.sms.hbs", Some("zh_CN"), &data(), None)
            .unwrap();
        assert_eq!(r.text, "你好 Ann");

        fs::write(root.join("winback/b1.sms.hbs"), "{{#if}}").unwrap();
        fs::write(root.join("winback/b2.sms.hbs"), "ok\n{{/each}}").unwrap();
        let e = TemplateSet::load(root).unwrap_err();
        let all = e.flatten();
        assert_eq!(all.len(), 2, "{e}");
        assert!(e.to_string().contains("b1.sms.hbs:1:"), "{e}");
        assert!(e.to_string().contains("b2.sms.hbs:2:"), "{e}");
        assert!(matches!(
            TemplateSet::load(&root.join("nope")),
            Err(TemplateError::Io { .. })
        ));
    }

    #[test]
    fn templates_that_include_each_other_are_refused_at_load() {
        let err = TemplateSet::from_strings(&[
            ("a.sms.hbs", "{{#if x}}{{> b.sms.hbs}}{{/if}}"),
            ("b.sms.hbs", "{{> c.sms.hbs}} {{> a.sms.hbs}}"),
            ("c.sms.hbs", "fine"),
            ("d.email.hbs", "{{> d.email.hbs}}"),
            ("e.sms.hbs", "{{> c.sms.hbs}} {{> c.sms.hbs}}"),
        ])
        .unwrap_err();
        let messages: Vec<String> = err.flatten().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            messages,
            [
                "d.email.hbs: includes itself through partials (d.email.hbs > d.email.hbs); a template must not include itself, directly or through others",
                "a.sms.hbs: includes itself through partials (a.sms.hbs > b.sms.hbs > a.sms.hbs); a template must not include itself, directly or through others",
            ]
        );
        // An inline subject that includes itself is refused, and not kept.
        let mut s = set(&[("a.sms.hbs", "x")]);
        assert!(matches!(
            s.register_inline("subject", "{{> subject}}"),
            Err(TemplateError::PartialCycle(_))
        ));
        assert!(
            s.render_inline("subject", &serde_json::json!({}), None)
                .is_err()
        );
        s.register_inline("subject", "Hi").unwrap();
    }

    #[test]
    fn reads_follow_partials() {
        let s = set(&[
            ("a.sms.hbs", "{{> b.sms.hbs}} {{top.x.y}} {{> b.sms.hbs}}"),
            ("b.sms.hbs", "{{rfm.r}} {{> missing}}"),
            ("c.sms.hbs", "{{best_hour}}"),
            ("d.sms.hbs", "at {{> c.sms.hbs}}"),
        ]);
        // A partial is included by its file name, as `reads` follows it.
        let out = s.render(
            "d.sms.hbs",
            None,
            &serde_json::json!({"best_hour": 19}),
            None,
        );
        assert_eq!(out.unwrap().text, "at 19");
        assert!(s.reads("d.sms.hbs").best_hour);
        // a includes b twice, and b a partial that does not exist.
        let r = s.reads("a.sms.hbs");
        assert!(r.rfm && !r.lifecycle && !r.best_hour);
        assert_eq!(
            r.top.into_iter().collect::<Vec<_>>(),
            [("x".to_string(), "y".to_string())]
        );
    }

    #[test]
    fn top_paths_cover_locale_variants_and_inline_templates() {
        let mut s = set(&[
            ("w/d.sms.hbs", "{{top.order_placed.sku}}"),
            ("w/d.sms.zh-CN.hbs", "{{default top.app_open.screen \"\"}}"),
            ("w/d.email.hbs", "<p>{{top.order_placed.colour}}</p>"),
        ]);
        s.register_inline("subject", "{{top.login.device}}")
            .unwrap();
        let pair = |e: &str, p: &str| (e.to_string(), p.to_string());
        assert_eq!(
            s.reads("w/d.sms.hbs").top.into_iter().collect::<Vec<_>>(),
            [pair("app_open", "screen"), pair("order_placed", "sku")]
        );
        assert_eq!(
            s.reads("w/d.email.hbs").top.into_iter().collect::<Vec<_>>(),
            [pair("order_placed", "colour")]
        );
        assert_eq!(
            s.inline_reads("subject")
                .top
                .into_iter()
                .collect::<Vec<_>>(),
            [pair("login", "device")]
        );
        assert_eq!(s.reads("nope.sms.hbs"), TemplateReads::default());
        assert_eq!(s.inline_reads("w/d.sms.hbs"), TemplateReads::default());
    }

    #[test]
    fn a_set_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TemplateSet>();
        let s = std::sync::Arc::new(set(&[("a.sms.hbs", "{{track \"https://x.example/a\"}}")]));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.render("a.sms.hbs", None, &json!({}), Some(&ctx(true)))
                        .unwrap()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().links.len(), 1);
        }
    }
}
