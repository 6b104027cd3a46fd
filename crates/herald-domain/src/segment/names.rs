//! The names the language knows and "did you mean" suggestions for the ones it does not.

/// Plain field names (besides `attrs.PATH`).
pub(crate) const FIELDS: &[&str] = &[
    "email",
    "phone",
    "timezone",
    "locale",
    "lifecycle",
    "first_seen_days",
    "rfm.r",
    "rfm.f",
    "rfm.m",
    "rfm.r_days",
    "rfm.f_count",
    "rfm.m_value",
];

/// Function names.
pub(crate) const FUNCTIONS: &[&str] = &[
    "has_tag",
    "channel_ok",
    "count",
    "sum",
    "days_since",
    "overdue",
];

/// Reserved words (lowercase only).
pub(crate) const KEYWORDS: &[&str] = &[
    "and", "or", "not", "between", "in", "contains", "true", "false",
];

/// Largest edit distance still worth a "did you mean".
const MAX_SUGGESTION_DISTANCE: usize = 2;

/// A short example call of each function, for hints.
pub(crate) fn example_call(function: &str) -> String {
    match function {
        "has_tag" => "has_tag(\"vip\")".into(),
        "channel_ok" => "channel_ok(\"sms\")".into(),
        "count" => "count(\"order_placed\", \"30d\") >= 2".into(),
        "sum" => "sum(\"order_placed\", \"365d\") > 100".into(),
        "days_since" => "days_since(\"order_placed\") > 90".into(),
        "overdue" => "overdue(\"order_placed\") > 2".into(),
        other => format!("{other}(...)"),
    }
}

/// Restricted Damerau-Levenshtein (optimal string alignment) distance, over characters.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let len = name.chars().count();
    candidates
        .into_iter()
        .map(|c| (distance(&name.to_lowercase(), c), c))
        .filter(|&(d, _)| d <= MAX_SUGGESTION_DISTANCE && d < len)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// "keywords are lowercase" when `name` is a keyword in the wrong case.
pub(crate) fn miscased_keyword(name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    (lower != name && KEYWORDS.contains(&lower.as_str()))
        .then(|| format!("keywords are lowercase: write `{lower}`"))
}

/// A hint for an unknown field name.
pub(crate) fn unknown_field_help(name: &str) -> String {
    if let Some(help) = miscased_keyword(name) {
        return help;
    }
    if name == "tag" || name == "tags" {
        return "test tags with `has_tag(\"vip\")`".into();
    }
    if let Some((head, rest)) = name.split_once('.')
        && head != "rfm"
        && (distance(head, "attrs") <= MAX_SUGGESTION_DISTANCE
            || head == "attribute"
            || head == "attributes")
    {
        return format!("did you mean `attrs.{rest}`?");
    }
    if let Some(near) = closest(name, FIELDS.iter().copied()) {
        return format!("did you mean `{near}`?");
    }
    if let Some(near) = closest(name, FUNCTIONS.iter().copied()) {
        return format!("did you mean `{}`?", example_call(near));
    }
    if name.starts_with("rfm.") {
        return "rfm fields are: rfm.r, rfm.f, rfm.m, rfm.r_days, rfm.f_count, rfm.m_value".into();
    }
    format!(
        "fields are: {}, attrs.PATH; functions: {}",
        FIELDS.join(", "),
        FUNCTIONS.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(distance("cnt", "count"), 2);
        assert_eq!(distance("emial", "email"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
        assert_eq!(distance("dormat", "dormant"), 1);
    }

    #[test]
    fn closest_ignores_far_names() {
        assert_eq!(closest("cnt", FUNCTIONS.iter().copied()), Some("count"));
        assert_eq!(closest("zzzzzz", FUNCTIONS.iter().copied()), None);
        assert_eq!(closest("x", ["sum"]), None);
        assert_eq!(closest("Email", FIELDS.iter().copied()), Some("email"));
    }
}
