//! herald's handlebars helpers: `default` (the one way to tolerate absence),
//! `track` (a click link signed for this message, short in SMS) and
//! `top` (a contact's N most frequent values of an event property),
//! comparisons (`eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `not`) that treat a
//! missing value as false instead of failing, like the segment language.
//! Helpers are shared by every render, so the links one render makes are
//! collected in a thread-local set around that (synchronous) render call.

use std::cell::RefCell;
use std::cmp::Ordering;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, PathAndJson, RenderContext,
    RenderErrorReason, Renderable, ScopedJson,
};
use herald_domain::token::TokenSigner;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::Value;

/// Characters in an SMS short-link code (base62: about 48 bits).
pub const SHORT_CODE_LEN: usize = 8;

/// Path of click links: `{public_url}/c/{token}`.
pub const CLICK_PATH: &str = "/c/";

/// Path of SMS short links: `{public_url}/s/{code}`.
pub const SHORT_PATH: &str = "/s/";

/// What `track` needs to make links for one message.
#[derive(Debug, Clone)]
pub struct LinkContext {
    /// The message the links belong to (signed into click tokens).
    pub message_id: i64,
    /// Where the tracking server is reachable, e.g. `https://t.example.com`.
    pub public_url: String,
    /// Signs click tokens with the tracking secret.
    pub signer: TokenSigner,
    /// SMS: `{public_url}/s/{code}` with a random code instead of a signed token.
    pub short_links: bool,
}

/// A link a render made; the caller stores it so `/c` and `/s` redirect only to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackedLink {
    /// 0-based order of distinct URLs in this render (the click token's `link`).
    pub index: u16,
    /// The destination, exactly as the template gave it.
    pub url: String,
    /// The SMS short code, when short links were asked for.
    pub short_code: Option<String>,
}

/// Why one of our helpers refused; carried through handlebars and mapped back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelperFailure {
    /// `track` got something that is not an http(s) URL.
    #[error("`track` accepts only http and https URLs, not `{0}`")]
    InvalidLink(String),
    /// A helper got the wrong number or kind of arguments.
    #[error("{0}")]
    Usage(String),
}

impl From<HelperFailure> for handlebars::RenderError {
    fn from(f: HelperFailure) -> Self {
        RenderErrorReason::NestedError(Box::new(f)).into()
    }
}

/// The links of the render running on this thread.
struct Collector {
    ctx: Option<LinkContext>,
    links: Vec<TrackedLink>,
}

thread_local! {
    static COLLECTOR: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// Installs a fresh collector for one render; restores the previous one when dropped.
pub(crate) struct CollectGuard {
    previous: Option<Collector>,
}

impl CollectGuard {
    /// Starts collecting the links of a render made with `ctx`.
    pub(crate) fn begin(ctx: Option<&LinkContext>) -> Self {
        let fresh = Collector {
            ctx: ctx.cloned(),
            links: Vec::new(),
        };
        let previous = COLLECTOR.with(|c| c.borrow_mut().replace(fresh));
        Self { previous }
    }

    /// The links collected so far (ends the collection).
    pub(crate) fn finish(self) -> Vec<TrackedLink> {
        COLLECTOR.with(|c| {
            c.borrow_mut()
                .as_mut()
                .map(|col| std::mem::take(&mut col.links))
                .unwrap_or_default()
        })
    }
}

impl Drop for CollectGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        COLLECTOR.with(|c| *c.borrow_mut() = previous);
    }
}

/// Registers herald's helpers (overriding handlebars' strict comparisons).
pub(crate) fn register_all(hb: &mut Handlebars<'static>) {
    hb.register_helper("default", Box::new(DefaultHelper));
    hb.register_helper("track", Box::new(TrackHelper));
    hb.register_helper("top", Box::new(TopHelper));
    for op in [
        Cmp::Eq,
        Cmp::Ne,
        Cmp::Gt,
        Cmp::Gte,
        Cmp::Lt,
        Cmp::Lte,
        Cmp::Not,
    ] {
        hb.register_helper(op.name(), Box::new(op));
    }
}

/// The error for a parameter whose path has no value.
fn missing(param: &PathAndJson<'_>) -> handlebars::RenderError {
    handlebars::RenderError::strict_error(param.relative_path())
}

/// Absent for `default`: missing, null or the empty string.
fn is_blank(param: &PathAndJson<'_>) -> bool {
    param.is_value_missing()
        || match param.value() {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            _ => false,
        }
}

/// `{{default VALUE "fallback"}}`: VALUE unless it is missing, null or "", else the fallback.
#[derive(Clone, Copy)]
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        let (Some(value), Some(fallback), None) = (h.param(0), h.param(1), h.param(2)) else {
            return Err(HelperFailure::Usage(
                "`default` takes two arguments: {{default VALUE \"fallback\"}}".into(),
            )
            .into());
        };
        let chosen = if is_blank(value) { fallback } else { value };
        if chosen.is_value_missing() {
            return Err(missing(chosen));
        }
        Ok(ScopedJson::Derived(chosen.value().clone()))
    }
}

/// Where the render context keeps each contact's ranked `top` values:
/// `top_lists.EVENT.PROPERTY` is an array, most frequent first.
pub const TOP_LISTS: &str = "top_lists";

/// `(top "EVENT" "PROPERTY" N)`: the contact's N most frequent values of
/// PROPERTY among their EVENT events, most frequent first (fewer if they
/// have fewer; none is an empty list, which `{{#each}}` skips).
#[derive(Clone, Copy)]
struct TopHelper;

impl HelperDef for TopHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        let usage = || {
            HelperFailure::Usage(
                "`top` takes an event, a property and a count: (top \"order_placed\" \"sku\" 3)"
                    .into(),
            )
        };
        let (Some(event), Some(property), Some(n), None) =
            (h.param(0), h.param(1), h.param(2), h.param(3))
        else {
            return Err(usage().into());
        };
        let (Value::String(event), Value::String(property), Some(n)) =
            (event.value(), property.value(), n.value().as_u64())
        else {
            return Err(usage().into());
        };
        let items: Vec<Value> = ctx
            .data()
            .get(TOP_LISTS)
            .and_then(|t| t.get(event))
            .and_then(|e| e.get(property))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .take(usize::try_from(n).unwrap_or(usize::MAX))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Ok(ScopedJson::Derived(Value::Array(items)))
    }
}

/// `{{track "https://..."}}`: a click link for this message (short in SMS).
#[derive(Clone, Copy)]
struct TrackHelper;

impl HelperDef for TrackHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        let (Some(param), None) = (h.param(0), h.param(1)) else {
            return Err(HelperFailure::Usage(
                "`track` takes one argument: {{track \"https://...\"}}".into(),
            )
            .into());
        };
        if param.is_value_missing() {
            return Err(missing(param));
        }
        let url = match param.value() {
            Value::String(s) => s.as_str(),
            other => return Err(HelperFailure::InvalidLink(other.to_string()).into()),
        };
        if !is_http_url(url) {
            return Err(HelperFailure::InvalidLink(url.to_owned()).into());
        }
        let link = COLLECTOR.with(|c| match c.borrow_mut().as_mut() {
            Some(col) => col.link_for(url),
            // Only reachable when handlebars is driven outside TemplateSet.
            None => Ok(url.to_owned()),
        })?;
        Ok(ScopedJson::Derived(Value::String(link)))
    }
}

impl Collector {
    /// The text `track` writes for `url`, recording the link on first sight.
    fn link_for(&mut self, url: &str) -> Result<String, HelperFailure> {
        let position = self.links.iter().position(|l| l.url == url);
        let link = match position {
            Some(i) => &self.links[i],
            None => {
                let index = u16::try_from(self.links.len()).map_err(|_| {
                    HelperFailure::Usage("more tracked links than a message can hold".into())
                })?;
                let short = self.ctx.as_ref().is_some_and(|c| c.short_links);
                self.links.push(TrackedLink {
                    index,
                    url: url.to_owned(),
                    short_code: short.then(short_code),
                });
                &self.links[self.links.len() - 1]
            }
        };
        let Some(ctx) = &self.ctx else {
            // Previews without a message: the destination itself.
            return Ok(link.url.clone());
        };
        let base = ctx.public_url.trim_end_matches('/');
        Ok(match &link.short_code {
            Some(code) => format!("{base}{SHORT_PATH}{code}"),
            None => {
                let token = ctx.signer.sign_link(ctx.message_id, link.index, &link.url);
                format!("{base}{CLICK_PATH}{token}")
            }
        })
    }
}

/// A fresh random short code: [`SHORT_CODE_LEN`] base62 characters.
pub fn short_code() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(SHORT_CODE_LEN)
        .map(char::from)
        .collect()
}

/// An absolute http(s) URL with a host and no whitespace or control characters.
pub fn is_http_url(url: &str) -> bool {
    let rest = ["https://", "http://"].iter().find_map(|scheme| {
        url.get(..scheme.len())
            .filter(|p| p.eq_ignore_ascii_case(scheme))
            .map(|_| &url[scheme.len()..])
    });
    let Some(rest) = rest else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A comparison helper; any comparison with a missing or null operand is false.
#[derive(Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    /// `not x`: true when x is falsy, missing included.
    Not,
}

impl Cmp {
    fn name(self) -> &'static str {
        match self {
            Cmp::Eq => "eq",
            Cmp::Ne => "ne",
            Cmp::Gt => "gt",
            Cmp::Gte => "gte",
            Cmp::Lt => "lt",
            Cmp::Lte => "lte",
            Cmp::Not => "not",
        }
    }

    fn arity(self) -> usize {
        if matches!(self, Cmp::Not) { 1 } else { 2 }
    }

    fn eval(self, h: &Helper<'_>) -> Result<bool, HelperFailure> {
        if h.params().len() != self.arity() {
            return Err(HelperFailure::Usage(format!(
                "`{}` takes {} argument(s)",
                self.name(),
                self.arity()
            )));
        }
        let present = |p: &PathAndJson<'_>| !p.is_value_missing() && !p.value().is_null();
        let params = h.params();
        if let Cmp::Not = self {
            return Ok(!(present(&params[0]) && truthy(params[0].value())));
        }
        let (a, b) = (&params[0], &params[1]);
        if !present(a) || !present(b) {
            return Ok(false);
        }
        let (a, b) = (a.value(), b.value());
        Ok(match self {
            Cmp::Eq => json_eq(a, b),
            Cmp::Ne => !json_eq(a, b),
            Cmp::Gt => compare(a, b) == Some(Ordering::Greater),
            Cmp::Gte => matches!(compare(a, b), Some(Ordering::Greater | Ordering::Equal)),
            Cmp::Lt => compare(a, b) == Some(Ordering::Less),
            Cmp::Lte => matches!(compare(a, b), Some(Ordering::Less | Ordering::Equal)),
            Cmp::Not => false,
        })
    }
}

impl HelperDef for Cmp {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = self.eval(h)?;
        if !h.is_block() {
            out.write(if value { "true" } else { "false" })?;
            return Ok(());
        }
        match if value { h.template() } else { h.inverse() } {
            Some(t) => t.render(r, ctx, rc, out),
            None => Ok(()),
        }
    }

    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        Ok(ScopedJson::Derived(Value::Bool(self.eval(h)?)))
    }
}

/// Handlebars truthiness: false, 0, "", [] and null are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

/// Equality where numbers compare by value (1 == 1.0).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => compare(a, b) == Some(Ordering::Equal),
        _ => a == b,
    }
}

/// Order of two numbers, two strings (by code point) or two booleans; a
/// numeric string compares with a number as that number.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    let num = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Number(_), _) | (_, Value::Number(_)) => num(a)?.partial_cmp(&num(b)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_are_links() {
        assert!(is_http_url("https://shop.example.com/p?x=1&y=2#top"));
        assert!(is_http_url("HTTP://example.com"));
        assert!(!is_http_url("javascript:alert(1)"));
        assert!(!is_http_url("ftp://example.com/"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("https:///path"));
        assert!(!is_http_url("https://exa mple.com"));
        assert!(!is_http_url("//example.com"));
        assert!(!is_http_url("mailto:a@b.c"));
    }

    #[test]
    fn short_codes_are_eight_base62_characters() {
        let a = short_code();
        assert_eq!(a.len(), SHORT_CODE_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, short_code());
    }

    #[test]
    fn comparisons_order_numbers_strings_and_numeric_strings() {
        use serde_json::json;
        assert_eq!(compare(&json!(2), &json!(10)), Some(Ordering::Less));
        assert_eq!(compare(&json!("2"), &json!(10)), Some(Ordering::Less));
        assert_eq!(compare(&json!("b"), &json!("a")), Some(Ordering::Greater));
        assert_eq!(compare(&json!("x"), &json!(1)), None);
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(!json_eq(&json!("1"), &json!(1)));
    }
}
