//! `paysync accounts show|list`: the CRM record as billing events left it.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use paysync_domain::billing::{AccountView, account_view};
use paysync_store::Store;

use crate::config::{self, Env};

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// One account: by id, by our external reference, or by provider customer.
    Show {
        /// The account id.
        id: Option<i64>,
        /// Our own reference (metadata.account_id / client_reference_id).
        #[arg(long, conflicts_with = "id")]
        external_ref: Option<String>,
        /// A provider customer id (cus_…).
        #[arg(long, conflicts_with_all = ["id", "external_ref"])]
        customer: Option<String>,
        /// The provider of --customer.
        #[arg(long, default_value = "stripe")]
        provider: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Accounts, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

async fn view(store: &Store, id: i64) -> anyhow::Result<Option<AccountView>> {
    Ok(store
        .account_facts(id)
        .await
        .context("reading the account")?
        .map(|f| account_view(&f)))
}

pub async fn run(env: &Env<'_>, command: AccountsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::new(&config::database(env)?)?;
    match command {
        AccountsCommand::Show {
            id,
            external_ref,
            customer,
            provider,
            json,
        } => {
            let id = match (id, external_ref.as_deref(), customer.as_deref()) {
                (Some(id), _, _) => Some(id),
                (None, Some(r), _) => store.find_account(Some(r), None).await?,
                (None, None, Some(c)) => store.find_account(None, Some((&provider, c))).await?,
                (None, None, None) => {
                    anyhow::bail!("give an account id, --external-ref R or --customer C")
                }
            };
            let Some(view) = (match id {
                Some(id) => view(&store, id).await?,
                None => None,
            }) else {
                eprintln!("paysync: no such account");
                return Ok(ExitCode::from(2));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                // Each field as its JSON text, as the JSON output shows it.
                let v = serde_json::to_value(&view)?;
                for key in [
                    "id",
                    "external_ref",
                    "email",
                    "name",
                    "lifecycle_stage",
                    "deal_stage",
                    "entitlement",
                    "subscription_status",
                    "plan",
                ] {
                    println!("{key:<20} {}", v[key]);
                }
                println!("totals               {}", v["totals"]);
                println!("customers            {}", v["customers"]);
                println!("open_tasks           {}", v["open_tasks"]);
            }
        }
        AccountsCommand::List { limit, json } => {
            let mut views = Vec::new();
            for id in store.account_ids(limit).await? {
                if let Some(v) = view(&store, id).await? {
                    views.push(v);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                println!(
                    "{:>6} {:<24} {:<12} {:<11} {:<8} EMAIL",
                    "ID", "EXTERNAL REF", "DEAL", "LIFECYCLE", "ENTITLE"
                );
                for v in &views {
                    let v = serde_json::to_value(v)?;
                    println!(
                        "{:>6} {:<24} {:<12} {:<11} {:<8} {}",
                        v["id"],
                        v["external_ref"].as_str().unwrap_or("-"),
                        v["deal_stage"].as_str().unwrap_or_default(),
                        v["lifecycle_stage"].as_str().unwrap_or_default(),
                        v["entitlement"].as_str().unwrap_or_default(),
                        v["email"].as_str().unwrap_or("-"),
                    );
                }
                println!(
                    "({} shown; {} applied events linked to no account)",
                    views.len(),
                    store.unlinked_event_count().await?
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
