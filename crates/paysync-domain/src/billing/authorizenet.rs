//! placeholder
use super::{BillingError, Changes};
use serde_json_borrow::Value as Json;
/// Event types the mapper applies.
pub const HANDLED_TYPES: &[&str] = &[];
/// What the event means.
pub fn changes(_event_type: &str, _event: &Json<'_>) -> Result<Changes, BillingError> {
    Err(BillingError::Missing("a supported event type"))
}

/// What Authorize.Net's transaction-details API says about one transaction: the part of
/// `getTransactionDetailsResponse.transaction` the mapper needs. The worker fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    /// `transId`.
    pub trans_id: String,
    /// `refTransId`: the original charge of a refund or void.
    pub ref_trans_id: Option<String>,
    /// `transactionStatus`, e.g. `settledSuccessfully`, `capturedPendingSettlement`,
    /// `authorizedPendingCapture`, `declined`, `voided`, `refundSettledSuccessfully`,
    /// `refundPendingSettlement`, `FDSPendingReview`.
    pub status: String,
    /// `responseCode`: 1 approved, 2 declined, 3 error, 4 held for review.
    pub response_code: Option<i64>,
    /// `settleAmount` (else `authAmount`) in minor units.
    pub amount: i64,
    /// `profile.customerProfileId`.
    pub customer_profile_id: Option<String>,
    /// `customer.id`: the merchant's own id of the customer (our external reference).
    pub merchant_customer_id: Option<String>,
    /// `customer.email`, else `billTo.email`.
    pub email: Option<String>,
    /// `billTo.firstName` and `billTo.lastName`, joined.
    pub name: Option<String>,
    /// `order.invoiceNumber`.
    pub invoice_number: Option<String>,
    /// `order.description`.
    pub description: Option<String>,
    /// `subscription.id` (ARB).
    pub subscription_id: Option<String>,
    /// `submitTimeUTC`, unix milliseconds.
    pub submitted_at_ms: Option<i64>,
}

/// What the event means once its transaction's details are known.
pub fn changes_with_transaction(
    _event_type: &str,
    _event: &Json<'_>,
    _tx: &Transaction,
) -> Result<Changes, BillingError> {
    Err(BillingError::Missing("a supported event type"))
}
