//! placeholder
use super::{BillingError, Changes};
use serde_json_borrow::Value as Json;
/// Event types the mapper applies.
pub const HANDLED_TYPES: &[&str] = &[];
/// What the event means.
pub fn changes(_event_type: &str, _event: &Json<'_>) -> Result<Changes, BillingError> {
    Err(BillingError::Missing("a supported event type"))
}
