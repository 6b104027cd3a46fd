//! The push route's parts by token platform. FCM sends to Android itself
//! but to iOS through APNs and to browsers through web push, with
//! credentials kept in the Firebase project; when one of those is wrong,
//! FCM answers `THIRD_PARTY_AUTH_ERROR` for that platform's tokens only
//! (`herald_channels::DeliveryError::PlatformFault`). So a push route has
//! a sub-route per such platform, each with its own health
//! ([`crate::health::RouteHealth`]): blocked, its messages stay planned and
//! the lane's claim leaves them out ([`PlatformFilter`]) while Android
//! tokens keep flowing; probed on its own; shown as `push:apns`.
//!
//! A token's platform is `push_tokens.platform` as imported (optional).
//! Tokens without one (or with a platform herald does not know) form the
//! sub-route `push:unlabelled`: FCM's refusal says such a token is an iOS
//! or web one, but not which, and herald cannot tell the unlabelled
//! Android tokens from them, so they wait together. A token imported as
//! `android` that FCM refuses so contradicts its label: that message's
//! temporary failure, as any other error of one message.

use std::fmt;

use crate::health::RouteHealth;

/// A part of the push route that a third-party credential serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PushPlatform {
    /// iOS tokens (`platform = "ios"`): APNs.
    Apns,
    /// Web tokens (`platform = "web"`): web push.
    Web,
    /// Tokens without a known platform.
    Unlabelled,
}

impl PushPlatform {
    /// Every sub-route, in a stable order.
    pub const ALL: [PushPlatform; 3] = [
        PushPlatform::Apns,
        PushPlatform::Web,
        PushPlatform::Unlabelled,
    ];

    /// The sub-route a token of `platform` (as imported) belongs to;
    /// `None` for Android, which needs no third-party credential.
    pub fn of(platform: Option<&str>) -> Option<PushPlatform> {
        match class(platform) {
            "apns" => Some(PushPlatform::Apns),
            "web" => Some(PushPlatform::Web),
            "android" => None,
            _ => Some(PushPlatform::Unlabelled),
        }
    }

    /// The class name the storage compares (see [`class`]).
    pub fn class(self) -> &'static str {
        match self {
            PushPlatform::Apns => "apns",
            PushPlatform::Web => "web",
            PushPlatform::Unlabelled => "unlabelled",
        }
    }

    /// The sub-route's name in `herald status`, `/metrics` and `route_blocks`.
    pub fn route(self) -> &'static str {
        match self {
            PushPlatform::Apns => "push:apns",
            PushPlatform::Web => "push:web",
            PushPlatform::Unlabelled => "push:unlabelled",
        }
    }

    /// The sub-route's tokens, in words: `iOS tokens`.
    pub fn tokens(self) -> &'static str {
        match self {
            PushPlatform::Apns => "iOS tokens",
            PushPlatform::Web => "web tokens",
            PushPlatform::Unlabelled => "tokens imported without a platform",
        }
    }

    /// The credential in the Firebase project that FCM refused for them.
    pub fn credential(self) -> &'static str {
        match self {
            PushPlatform::Apns => "the APNs credential",
            PushPlatform::Web => "the web push credential",
            PushPlatform::Unlabelled => "the APNs or web push credential",
        }
    }

    /// Why the sub-route is blocked, in a marketer's words, around the
    /// provider's `detail`: `authentication failed for iOS tokens: ...`.
    pub fn reason(self, detail: &str) -> String {
        match self {
            PushPlatform::Apns | PushPlatform::Web => format!(
                "authentication failed for {}: {} in the Firebase project was refused ({detail})",
                self.tokens(),
                self.credential()
            ),
            PushPlatform::Unlabelled => format!(
                "authentication failed for tokens imported without a platform: the APNs or web push credential in the Firebase project was refused ({detail}); Android tokens without a platform wait with them (import push_platform to keep those going)"
            ),
        }
    }
}

impl fmt::Display for PushPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.route())
    }
}

/// The class of an imported platform: `apns`, `web`, `android` or
/// `unlabelled`; case and surrounding spaces do not matter. The storage's
/// claim filter computes the same in SQL (`LOWER(TRIM(platform))`), and
/// SQL's `TRIM` strips spaces only: so does this, or a tab would class a
/// token `apns` here and `unlabelled` in the claim.
pub fn class(platform: Option<&str>) -> &'static str {
    match platform
        .map(|p| p.trim_matches(' ').to_ascii_lowercase())
        .as_deref()
    {
        Some("ios") => "apns",
        Some("web") => "web",
        Some("android") => "android",
        _ => "unlabelled",
    }
}

/// Which push messages a lane's claim takes, by their token's platform.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformFilter {
    /// Any message (no sub-route is blocked: the claim joins nothing).
    #[default]
    Any,
    /// Every message but those of these blocked sub-routes.
    Except(Vec<PushPlatform>),
    /// Only this sub-route's messages: its probe.
    Only(PushPlatform),
    /// Only this sub-route's messages already refused for the credential:
    /// the probe's first choice. A probe must test the credential, and in
    /// `push:unlabelled` the oldest message may be an Android token, which
    /// FCM accepts whatever the APNs key: it would reopen the sub-route
    /// for every iOS token behind it to be refused again.
    Refused(PushPlatform),
}

impl PlatformFilter {
    /// Whether a message of sub-route `platform` (`None`: Android) passes.
    pub fn admits(&self, platform: Option<PushPlatform>) -> bool {
        match self {
            PlatformFilter::Any => true,
            PlatformFilter::Except(out) => platform.is_none_or(|p| !out.contains(&p)),
            PlatformFilter::Only(p) | PlatformFilter::Refused(p) => platform == Some(*p),
        }
    }
}

/// The health of each sub-route of a route (only push's are ever blocked).
#[derive(Debug, Default)]
pub struct PlatformHealth {
    healths: [RouteHealth; 3],
}

impl PlatformHealth {
    /// The health of `platform`'s sub-route.
    pub fn get(&self, platform: PushPlatform) -> &RouteHealth {
        &self.healths[PushPlatform::ALL
            .iter()
            .position(|p| *p == platform)
            .unwrap_or(0)]
    }

    /// Every sub-route with its health.
    pub fn iter(&self) -> impl Iterator<Item = (PushPlatform, &RouteHealth)> {
        PushPlatform::ALL.into_iter().zip(self.healths.iter())
    }

    /// The claim's filter: the blocked sub-routes left out.
    pub fn filter(&self) -> PlatformFilter {
        let blocked: Vec<PushPlatform> = self
            .iter()
            .filter(|(_, h)| h.is_blocked())
            .map(|(p, _)| p)
            .collect();
        if blocked.is_empty() {
            PlatformFilter::Any
        } else {
            PlatformFilter::Except(blocked)
        }
    }

    /// Whether any sub-route was blocked between `from` and `to` (ms).
    pub fn any_blocked_within(&self, from: i64, to: i64) -> bool {
        self.healths.iter().any(|h| h.blocked_within(from, to) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_platform_names_its_sub_route() {
        assert_eq!(PushPlatform::of(Some("ios")), Some(PushPlatform::Apns));
        assert_eq!(PushPlatform::of(Some(" iOS ")), Some(PushPlatform::Apns));
        // As SQL's TRIM in the claim: spaces only, so a tab keeps it unknown.
        assert_eq!(
            PushPlatform::of(Some("ios\t")),
            Some(PushPlatform::Unlabelled)
        );
        assert_eq!(PushPlatform::of(Some("WEB")), Some(PushPlatform::Web));
        // Android needs no third-party credential: never blocked by one.
        assert_eq!(PushPlatform::of(Some("android")), None);
        assert_eq!(PushPlatform::of(Some("Android")), None);
        // No platform, or one herald does not know: FCM's refusal says
        // iOS or web, not which.
        assert_eq!(PushPlatform::of(None), Some(PushPlatform::Unlabelled));
        assert_eq!(PushPlatform::of(Some("")), Some(PushPlatform::Unlabelled));
        assert_eq!(
            PushPlatform::of(Some("macos")),
            Some(PushPlatform::Unlabelled)
        );
        assert_eq!(PushPlatform::Apns.route(), "push:apns");
        assert!(
            PushPlatform::Apns
                .reason("FCM THIRD_PARTY_AUTH_ERROR: x")
                .starts_with("authentication failed for iOS tokens: the APNs credential")
        );
        // The SQL's class names are the Rust ones.
        assert_eq!(class(Some(" iOS ")), PushPlatform::Apns.class());
        assert_eq!(class(Some("web")), PushPlatform::Web.class());
        assert_eq!(class(None), PushPlatform::Unlabelled.class());
    }

    #[test]
    fn the_filter_leaves_out_the_blocked_sub_routes_only() {
        let h = PlatformHealth::default();
        assert_eq!(h.filter(), PlatformFilter::Any);
        h.get(PushPlatform::Apns).answer(Some("refused"), 10);
        let f = h.filter();
        assert_eq!(f, PlatformFilter::Except(vec![PushPlatform::Apns]));
        assert!(f.admits(None), "Android goes on");
        assert!(f.admits(Some(PushPlatform::Web)));
        assert!(!f.admits(Some(PushPlatform::Apns)));
        assert!(PlatformFilter::Only(PushPlatform::Apns).admits(Some(PushPlatform::Apns)));
        assert!(!PlatformFilter::Only(PushPlatform::Apns).admits(None));
        assert!(h.any_blocked_within(0, 20));
        assert!(!h.any_blocked_within(0, 10));
        h.get(PushPlatform::Apns).answer(None, 30);
        assert_eq!(h.filter(), PlatformFilter::Any);
    }
}
