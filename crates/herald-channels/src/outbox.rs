//! The outbox adapter, herald's embedded default for every channel: the
//! message is rendered, rate limited and recorded exactly as with a real
//! provider, then written to the database's outbox instead of leaving the machine.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Channel, DeliveryError, ProviderReceipt, RenderedMessage};

/// Where outbox messages are kept (the database implements it).
#[async_trait]
pub trait OutboxSink: Send + Sync {
    /// Stores one message; idempotent per message id.
    async fn put(&self, message: &RenderedMessage) -> Result<(), String>;
}

/// A channel that writes to an [`OutboxSink`].
pub struct OutboxChannel {
    sink: Arc<dyn OutboxSink>,
}

impl OutboxChannel {
    /// An outbox channel over `sink`.
    pub fn new(sink: Arc<dyn OutboxSink>) -> Self {
        Self { sink }
    }
}

#[async_trait]
impl Channel for OutboxChannel {
    fn delivered_on_accept(&self) -> bool {
        // SPEC section 1: acceptance is delivery, no receipt to wait for.
        true
    }

    async fn send(&self, message: &RenderedMessage) -> Result<ProviderReceipt, DeliveryError> {
        self.sink
            .put(message)
            .await
            .map(|()| ProviderReceipt {
                // The outbox row is keyed by the message id: no id of its
                // own to record (and so no second write of a handed message).
                provider_id: None,
                detail: "kept in the outbox".into(),
            })
            .map_err(|e| DeliveryError::Transient {
                code: "outbox".into(),
                detail: e,
                retry_after: None,
            })
    }
}
