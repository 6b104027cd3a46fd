//! Locale variants of a template: `discount.sms.zh-CN.hbs` beside
//! `discount.sms.hbs`. A contact's locale picks the most specific variant
//! (`zh-Hant-TW`, then `zh-Hant`, then `zh`), else the plain file. Tags match
//! case-insensitively, with `_` and `-` alike.

use std::collections::HashMap;

/// Template extension that locale tags sit in front of.
const EXTENSION: &str = ".hbs";

/// The locale variants of each plain template name.
#[derive(Debug, Default)]
pub(crate) struct Variants {
    /// Plain name → (normalised tag, variant's registered name), in load order.
    by_base: HashMap<String, Vec<(String, String)>>,
}

/// What a registered name is, seen as a possible locale variant.
pub(crate) struct VariantOf {
    /// The plain template's name.
    pub base: String,
    /// The normalised locale tag.
    pub tag: String,
}

/// `zh_cn` and `ZH-CN` → `zh-cn`.
pub(crate) fn normalize(tag: &str) -> String {
    tag.trim().replace('_', "-").to_ascii_lowercase()
}

/// A plausible BCP 47 tag: a 2-3 letter language, then 1-8 character alphanumeric subtags.
fn looks_like_locale(tag: &str) -> bool {
    let mut parts = tag.split(['-', '_']);
    let lang_ok = parts
        .next()
        .is_some_and(|l| (2..=3).contains(&l.len()) && l.chars().all(|c| c.is_ascii_alphabetic()));
    lang_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// `dir/discount.sms.zh-CN.hbs` is variant `zh-cn` of `dir/discount.sms.hbs`.
///
/// The file name must keep a channel part before the tag (`discount.sms`), so
/// `discount.sms.hbs` is never taken for variant `sms` of `discount.hbs`.
pub(crate) fn variant_of(name: &str) -> Option<VariantOf> {
    let stem = name.strip_suffix(EXTENSION)?;
    let (prefix, tag) = stem.rsplit_once('.')?;
    let file_prefix = prefix.rsplit('/').next().unwrap_or(prefix);
    if !file_prefix.contains('.') || !looks_like_locale(tag) {
        return None;
    }
    Some(VariantOf {
        base: format!("{prefix}{EXTENSION}"),
        tag: normalize(tag),
    })
}

impl Variants {
    /// Records `name` if it is a locale variant; returns the name it clashes with, if any.
    pub(crate) fn add(&mut self, name: &str) -> Result<(), String> {
        let Some(v) = variant_of(name) else {
            return Ok(());
        };
        let list = self.by_base.entry(v.base).or_default();
        if let Some((_, first)) = list.iter().find(|(t, _)| *t == v.tag) {
            return Err(first.clone());
        }
        list.push((v.tag, name.to_owned()));
        Ok(())
    }

    /// The registered names of every locale variant of `base`.
    pub(crate) fn of(&self, base: &str) -> impl Iterator<Item = &str> {
        self.by_base
            .get(base)
            .into_iter()
            .flatten()
            .map(|(_, name)| name.as_str())
    }

    /// The variant of `base` for `locale`, most specific first, if one exists.
    pub(crate) fn pick(&self, base: &str, locale: &str) -> Option<&str> {
        let list = self.by_base.get(base)?;
        let wanted = normalize(locale);
        let mut candidate = wanted.as_str();
        loop {
            if let Some((_, name)) = list.iter().find(|(t, _)| t == candidate) {
                return Some(name);
            }
            candidate = &candidate[..candidate.rfind('-')?];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_are_recognised() {
        let v = variant_of("winback/discount.sms.zh-CN.hbs").unwrap();
        assert_eq!(v.base, "winback/discount.sms.hbs");
        assert_eq!(v.tag, "zh-cn");
        assert_eq!(variant_of("a/b.email.pt_BR.hbs").unwrap().tag, "pt-br");
        assert!(variant_of("winback/discount.sms.hbs").is_none());
        assert!(variant_of("winback.v2/discount.sms.hbs").is_none());
        assert!(variant_of("discount.sms.zh-CN.txt").is_none());
        assert!(variant_of("discount.sms.123.hbs").is_none());
    }

    #[test]
    fn the_most_specific_variant_wins() {
        let mut v = Variants::default();
        v.add("d.sms.zh.hbs").unwrap();
        v.add("d.sms.zh-Hant.hbs").unwrap();
        v.add("d.sms.en-US.hbs").unwrap();
        assert_eq!(v.pick("d.sms.hbs", "zh-Hant-TW"), Some("d.sms.zh-Hant.hbs"));
        assert_eq!(v.pick("d.sms.hbs", "zh_CN"), Some("d.sms.zh.hbs"));
        assert_eq!(v.pick("d.sms.hbs", "EN_us"), Some("d.sms.en-US.hbs"));
        assert_eq!(v.pick("d.sms.hbs", "en"), None);
        assert_eq!(v.pick("d.sms.hbs", "fr"), None);
        assert_eq!(v.pick("other.sms.hbs", "zh"), None);
        assert_eq!(
            v.add("d.sms.ZH_hant.hbs"),
            Err("d.sms.zh-Hant.hbs".to_owned())
        );
    }
}
