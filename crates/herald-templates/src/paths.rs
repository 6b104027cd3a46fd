//! Which data a compiled template reads: a walk over handlebars' parsed
//! template (expressions, helper parameters and hash values, subexpressions,
//! block bodies and their `else` branches) collecting variable paths. herald
//! uses it to fetch only the `top.EVENT.PROPERTY` values a campaign prints.

use std::collections::BTreeSet;

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{Path, PathSeg};

/// The root of the personalisation paths `top.EVENT.PROPERTY`.
const TOP: &str = "top";

/// Adds to `out` every `(EVENT, PROPERTY)` of a `top.EVENT.PROPERTY` path in `t`.
///
/// Only paths written out in full count (`{{top.order_placed.sku}}`,
/// `{{default top.order_placed.sku "tea"}}`, `{{#if top.order_placed.sku}}`);
/// `{{#with top.order_placed}}{{sku}}{{/with}}` names no property, so nothing
/// is fetched for it and strict rendering reports the value as missing.
pub(crate) fn top_paths(t: &Template, out: &mut BTreeSet<(String, String)>) {
    for e in &t.elements {
        element(e, out);
    }
}

fn element(e: &TemplateElement, out: &mut BTreeSet<(String, String)>) {
    match e {
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => {
            let params = std::iter::once(&h.name)
                .chain(&h.params)
                .chain(h.hash.values());
            for p in params {
                parameter(p, out);
            }
            for t in h.template.iter().chain(&h.inverse) {
                top_paths(t, out);
            }
        }
        TemplateElement::DecoratorExpression(d)
        | TemplateElement::DecoratorBlock(d)
        | TemplateElement::PartialExpression(d)
        | TemplateElement::PartialBlock(d) => {
            let params = std::iter::once(&d.name)
                .chain(&d.params)
                .chain(d.hash.values());
            for p in params {
                parameter(p, out);
            }
            if let Some(t) = &d.template {
                top_paths(t, out);
            }
        }
        _ => {}
    }
}

fn parameter(p: &Parameter, out: &mut BTreeSet<(String, String)>) {
    match p {
        Parameter::Path(Path::Relative((segs, _))) => {
            let named: Option<Vec<&str>> = segs
                .iter()
                .map(|s| match s {
                    PathSeg::Named(n) => Some(n.as_str()),
                    _ => None,
                })
                .collect();
            if let Some([TOP, event, property, ..]) = named.as_deref() {
                out.insert((event.to_string(), property.to_string()));
            }
        }
        Parameter::Subexpression(s) => element(s.as_element(), out),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(src: &str) -> Vec<(String, String)> {
        let t = Template::compile(src).unwrap();
        let mut out = BTreeSet::new();
        top_paths(&t, &mut out);
        out.into_iter().collect()
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
    fn other_paths_and_text_are_not_top_paths() {
        assert!(
            paths(
                "top.a.b {{contact.attrs.top}} {{top.a}} {{#with top.a}}{{b}}{{/with}} {{!-- {{top.x.y}} --}} {{rfm.r}}"
            )
            .is_empty()
        );
        assert!(paths("{{contact.top.a.b}}").is_empty());
    }
}
