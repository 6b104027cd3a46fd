//! Which data a compiled template reads: a walk over handlebars' parsed
//! template (expressions, helper parameters and hash values, subexpressions,
//! block bodies and their `else` branches) collecting variable paths. herald
//! uses it to compute only the personalisation a campaign prints: the
//! `top.EVENT.PROPERTY` values it names, and RFM, lifecycle and best hour only
//! when some template reads them (each costs a query over the contacts' events).

use std::collections::{BTreeMap, BTreeSet};

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};
use serde_json::Value as Json;

/// The root of the personalisation paths `top.EVENT.PROPERTY`.
const TOP: &str = "top";

/// The personalisation a template reads (see [`TemplateReads::add`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateReads {
    /// `(EVENT, PROPERTY)` of every `top.EVENT.PROPERTY`.
    pub top: BTreeSet<(String, String)>,
    /// `(EVENT, PROPERTY)` of every `(top "EVENT" "PROPERTY" N)`, with the
    /// largest N asked for: the contact's N most frequent values.
    pub top_lists: BTreeMap<(String, String), usize>,
    /// `rfm` or one of its fields.
    pub rfm: bool,
    /// `lifecycle`.
    pub lifecycle: bool,
    /// `best_hour`.
    pub best_hour: bool,
    /// The partials it includes by name (`{{> footer}}`), whose reads count too.
    pub(crate) partials: BTreeSet<String>,
}

impl TemplateReads {
    /// Adds what `t` reads.
    ///
    /// `top` counts only paths written out in full (`{{top.order_placed.sku}}`,
    /// `{{default top.order_placed.sku "tea"}}`, `{{#if top.order_placed.sku}}`);
    /// `{{#with top.order_placed}}{{sku}}{{/with}}` names no property, so nothing
    /// is fetched for it and strict rendering reports the value as missing.
    /// `rfm`, `lifecycle` and `best_hour` count wherever the name appears in a
    /// path (`{{rfm.r}}`, `{{#with rfm}}`, `{{../lifecycle}}`) or as a quoted
    /// name (`{{lookup this "best_hour"}}`). A template that reaches them only
    /// by iterating the whole context sees them as missing.
    pub fn add(&mut self, t: &Template) {
        for e in &t.elements {
            self.element(e);
        }
    }

    /// Adds everything `other` reads.
    pub fn extend(&mut self, other: TemplateReads) {
        self.top.extend(other.top);
        for (key, n) in other.top_lists {
            let mine = self.top_lists.entry(key).or_default();
            *mine = (*mine).max(n);
        }
        self.rfm |= other.rfm;
        self.lifecycle |= other.lifecycle;
        self.best_hour |= other.best_hour;
        self.partials.extend(other.partials);
    }

    fn element(&mut self, e: &TemplateElement) {
        match e {
            TemplateElement::Expression(h)
            | TemplateElement::HtmlExpression(h)
            | TemplateElement::HelperBlock(h) => {
                if let Some((key, n)) = top_call(&h.name, &h.params) {
                    let mine = self.top_lists.entry(key).or_default();
                    *mine = (*mine).max(n);
                }
                let params = std::iter::once(&h.name)
                    .chain(&h.params)
                    .chain(h.hash.values());
                for p in params {
                    self.parameter(p);
                }
                for t in h.template.iter().chain(&h.inverse) {
                    self.add(t);
                }
            }
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                if let Some(name) = partial_name(&d.name) {
                    self.partials.insert(name);
                }
                for p in d.params.iter().chain(d.hash.values()) {
                    self.parameter(p);
                }
                if let Some(t) = &d.template {
                    self.add(t);
                }
            }
            TemplateElement::DecoratorExpression(d) | TemplateElement::DecoratorBlock(d) => {
                let params = std::iter::once(&d.name)
                    .chain(&d.params)
                    .chain(d.hash.values());
                for p in params {
                    self.parameter(p);
                }
                if let Some(t) = &d.template {
                    self.add(t);
                }
            }
            _ => {}
        }
    }

    fn parameter(&mut self, p: &Parameter) {
        match p {
            Parameter::Path(Path::Relative((segs, _))) => {
                let named: Vec<&str> = segs
                    .iter()
                    .filter_map(|s| match s {
                        PathSeg::Named(n) => Some(n.as_str()),
                        _ => None,
                    })
                    .collect();
                let only_named = named.len() == segs.len();
                if let (true, [TOP, event, property, ..]) = (only_named, named.as_slice()) {
                    self.top.insert((event.to_string(), property.to_string()));
                }
                for n in named {
                    self.name(n);
                }
            }
            Parameter::Path(Path::Local((_, name, _))) => self.name(name),
            Parameter::Literal(Json::String(s)) => self.name(s),
            Parameter::Subexpression(s) => self.element(s.as_element()),
            _ => {}
        }
    }

    fn name(&mut self, n: &str) {
        match n {
            "rfm" => self.rfm = true,
            "lifecycle" => self.lifecycle = true,
            "best_hour" => self.best_hour = true,
            _ => {}
        }
    }
}

/// The most items `top` returns: a message is no catalogue.
pub const MAX_TOP_ITEMS: usize = 20;

/// `(top "EVENT" "PROPERTY" N)`: the pair and N (at most [`MAX_TOP_ITEMS`]),
/// when all three are literals; a computed argument names nothing that can
/// be fetched before rendering.
fn top_call(name: &Parameter, params: &[Parameter]) -> Option<((String, String), usize)> {
    let is_top = match name {
        Parameter::Name(n) => n == TOP,
        Parameter::Path(Path::Relative((segs, _))) => {
            matches!(segs.as_slice(), [PathSeg::Named(n)] if n == TOP)
        }
        _ => false,
    };
    match (is_top, params) {
        (
            true,
            [
                Parameter::Literal(Json::String(event)),
                Parameter::Literal(Json::String(property)),
                Parameter::Literal(Json::Number(n)),
            ],
        ) => {
            let n = usize::try_from(n.as_u64()?).ok()?.clamp(1, MAX_TOP_ITEMS);
            Some(((event.clone(), property.clone()), n))
        }
        _ => None,
    }
}

/// The name a partial is included by (`{{> footer}}`); none for a name computed
/// while rendering (`{{> (lookup ...)}}`), whose reads cannot be known here.
fn partial_name(p: &Parameter) -> Option<String> {
    match p {
        Parameter::Name(n) => Some(n.clone()),
        Parameter::Path(Path::Relative((_, raw))) => Some(raw.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(src: &str) -> TemplateReads {
        let mut out = TemplateReads::default();
        out.add(&Template::compile(src).unwrap());
        out
    }

    fn paths(src: &str) -> Vec<(String, String)> {
        reads(src).top.into_iter().collect()
    }

    /// (rfm, lifecycle, best_hour)
    fn personal(src: &str) -> (bool, bool, bool) {
        let r = reads(src);
        (r.rfm, r.lifecycle, r.best_hour)
    }

    fn pair(e: &str, p: &str) -> (String, String) {
        (e.to_string(), p.to_string())
    }

    #[test]
    fn finds_top_paths_wherever_they_are_read() {
        assert_eq!(
            paths("Hi {{top.order_placed.sku}} and {{{top.app_open.screen}}}"),
            [pair("app_open", "screen"), pair("order_placed", "sku")]
        );
        assert_eq!(
            paths(
                "{{#if (eq top.a.b \"x\")}}{{default top.c.d \"y\"}}{{else}}{{track top.e.f}}{{/if}}"
            ),
            [pair("a", "b"), pair("c", "d"), pair("e", "f")]
        );
        assert_eq!(
            paths("{{#each contact.tags}}{{top.[order placed].sku}}{{/each}}{{> p x=top.g.h}}"),
            [pair("g", "h"), pair("order placed", "sku")]
        );
    }

    #[test]
    fn top_calls_ask_for_the_most_items_of_each_pair() {
        let r = reads(
            "{{#each (top \"order_placed\" \"sku\" 3)}}{{this}}{{/each}} \
             {{#each (top \"order_placed\" \"sku\" 2)}}{{/each}} {{top \"app_open\" \"screen\" 500}} \
             {{top.order_placed.colour}} {{#each (top x \"y\" 2)}}{{/each}}",
        );
        assert_eq!(
            r.top_lists.into_iter().collect::<Vec<_>>(),
            [
                (pair("app_open", "screen"), MAX_TOP_ITEMS),
                (pair("order_placed", "sku"), 3)
            ]
        );
        // The one-item form is still a path of its own.
        assert_eq!(
            r.top.into_iter().collect::<Vec<_>>(),
            [pair("order_placed", "colour")]
        );
    }

    #[test]
    fn other_paths_and_text_are_not_top_paths() {
        assert!(
            paths(
                "top.a.b {{contact.attrs.top}} {{top.a}} {{#with top.a}}{{b}}{{/with}} {{!-- {{top.x.y}} --}} {{rfm.r}}"
            )
            .is_empty()
        );
        assert!(paths("{{contact.top.a.b}}").is_empty());
    }

    #[test]
    fn rfm_lifecycle_and_best_hour_count_wherever_they_are_named() {
        assert_eq!(
            personal("Hi {{contact.external_id}} {{top.a.b}}"),
            (false, false, false)
        );
        assert_eq!(personal("{{rfm.r}}"), (true, false, false));
        assert_eq!(
            personal("{{#if (eq lifecycle \"dormant\")}}x{{/if}}"),
            (false, true, false)
        );
        assert_eq!(
            personal("{{#with contact}}{{../best_hour}}{{/with}}"),
            (false, false, true)
        );
        assert_eq!(
            personal("{{#with rfm}}{{r}}{{/with}}"),
            (true, false, false)
        );
        assert_eq!(
            personal("{{lookup this \"best_hour\"}}"),
            (false, false, true)
        );
        assert_eq!(personal("{{> footer x=lifecycle}}"), (false, true, false));
        // Text and comments read nothing.
        assert_eq!(
            personal("rfm lifecycle {{!-- {{best_hour}} --}}"),
            (false, false, false)
        );
    }

    #[test]
    fn partials_are_listed_by_name() {
        let r = reads("{{> footer}} {{#> layout}}x{{/layout}} {{> w/d.sms.hbs}}");
        assert_eq!(
            r.partials.into_iter().collect::<Vec<_>>(),
            ["footer", "layout", "w/d.sms.hbs"]
        );
    }
}
