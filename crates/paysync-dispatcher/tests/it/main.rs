//! The dispatcher against the real PostgreSQL: leases, fencing, the reaper, breakers, rate
//! limits, and the destinations' fakes speaking their real protocols.

mod acceptance;
mod app;
mod app_life;
mod chat_hubspot;
mod email_stall;
mod helpers;
mod lanes;
mod standard_webhooks;
