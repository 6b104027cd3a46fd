//! Small shared vocabulary: channels, message statuses and their reasons,
//! campaign kinds. Each is stored in the database by its `as_str` name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A way to reach a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Email over SMTP (or the outbox).
    Email,
    /// SMS over a Twilio-compatible API (or the outbox).
    Sms,
    /// Mobile push over an FCM-compatible API (or the outbox).
    Push,
}

impl Channel {
    /// Every channel, in a stable order.
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Push];

    /// The name used in config files and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "email" => Ok(Channel::Email),
            "sms" => Ok(Channel::Sms),
            "push" => Ok(Channel::Push),
            _ => Err(format!(
                "unknown channel `{s}`; expected one of: email, sms, push"
            )),
        }
    }
}

/// Where a message is in its life (SPEC section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Waiting for its `send_at`.
    Planned,
    /// Claimed by a worker under a lease.
    Sending,
    /// The provider accepted it.
    Sent,
    /// A receipt (or acceptance, for channels without receipts) said it arrived.
    Delivered,
    /// It came back.
    Bounced,
    /// Permanently refused, or attempts exhausted.
    Failed,
    /// The request may have reached the provider but no answer came; never resent.
    Unknown,
    /// Not sent by policy (opt-out, cap, no address, ...).
    Suppressed,
    /// The control group: never sent, measured alike.
    HeldOut,
    /// An exit condition or a cancelled run.
    Cancelled,
}

impl MessageStatus {
    /// Every status.
    pub const ALL: [MessageStatus; 10] = [
        MessageStatus::Planned,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Bounced,
        MessageStatus::Failed,
        MessageStatus::Unknown,
        MessageStatus::Suppressed,
        MessageStatus::HeldOut,
        MessageStatus::Cancelled,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Planned => "planned",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Bounced => "bounced",
            MessageStatus::Failed => "failed",
            MessageStatus::Unknown => "unknown",
            MessageStatus::Suppressed => "suppressed",
            MessageStatus::HeldOut => "held_out",
            MessageStatus::Cancelled => "cancelled",
        }
    }
}

impl FromStr for MessageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown message status `{s}`"))
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message was suppressed (SPEC section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressReason {
    /// The contact unsubscribed from the channel or topic.
    OptOut,
    /// A frequency cap.
    Cap,
    /// No address on any of the campaign's channels.
    NoAddress,
    /// No consent for the channel.
    NoConsent,
    /// The address cannot be sent to.
    InvalidAddress,
    /// Another contact in this run has the same address.
    DuplicateAddress,
    /// The contact got this campaign within its `reentry` window.
    Reentry,
    /// In the global holdout: no marketing campaign reaches them.
    GlobalHoldout,
}

impl SuppressReason {
    /// Every reason, for code that must say each in words.
    pub const ALL: [SuppressReason; 8] = [
        SuppressReason::OptOut,
        SuppressReason::Cap,
        SuppressReason::NoAddress,
        SuppressReason::NoConsent,
        SuppressReason::InvalidAddress,
        SuppressReason::DuplicateAddress,
        SuppressReason::Reentry,
        SuppressReason::GlobalHoldout,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::OptOut => "opt_out",
            SuppressReason::Cap => "cap",
            SuppressReason::NoAddress => "no_address",
            SuppressReason::NoConsent => "no_consent",
            SuppressReason::InvalidAddress => "invalid_address",
            SuppressReason::DuplicateAddress => "duplicate_address",
            SuppressReason::Reentry => "reentry",
            SuppressReason::GlobalHoldout => "global_holdout",
        }
    }
}

/// `marketing` campaigns obey caps, quiet hours and topics; `transactional` ones do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignKind {
    /// Promotional: caps, quiet hours, topics and opt-out lines apply.
    #[default]
    Marketing,
    /// Receipts, password resets: none of the above apply.
    Transactional,
}

impl CampaignKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignKind::Marketing => "marketing",
            CampaignKind::Transactional => "transactional",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for st in MessageStatus::ALL {
            assert_eq!(st.as_str().parse::<MessageStatus>().unwrap(), st);
        }
        assert!("sendingg".parse::<MessageStatus>().is_err());
    }
}
