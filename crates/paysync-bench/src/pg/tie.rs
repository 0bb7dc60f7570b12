//! The pgbench scripts against the worker's statements: each SQL statement of
//! `pgbench/event-1.sql` and `pgbench/events-n.sql` must be the store's statement
//! (`paysync_store::statements`), whitespace aside, with each `$n` parameter (and its cast)
//! written as one pgbench expression, except for the differences listed here, each with its
//! reason. A change on either side that is not listed fails the test, which names the file,
//! the statement and the place where the two part.
//!
//! Rule of thumb: when this fails after a change to the store, change the script the same way
//! (the published ceiling must run what the worker runs); list a difference here only where
//! pgbench cannot write the statement as the worker does.

use paysync_domain::billing::ObjectKind;
use paysync_store::statements;

use super::{EVENT_SCRIPT, EVENTS_SCRIPT};

/// A deliberate difference between the store's statement and the script's.
#[derive(Debug, Clone, Copy)]
enum Diff {
    /// The store's text `.0` is written `.1` in the script.
    Swap(&'static str, &'static str),
    /// The script has rows of its own (built from `generate_series` or the accounts the
    /// mapping read returned) where the store's statement runs from `from` up to `until`
    /// (which is not part of it): the select list and the `unnest` of the bound arrays.
    OwnRows {
        from: &'static str,
        until: &'static str,
    },
}

/// One statement of a script and the store's statement it runs.
struct Tie {
    /// What it does, for the message.
    what: &'static str,
    /// Where the store's text comes from, for the message.
    source: &'static str,
    /// The store's text.
    store: &'static str,
    /// The differences the script may have.
    diffs: &'static [Diff],
}

/// `\gset` keeps the account in `:acct` for the next statements.
const ACCT_ALIAS: Diff = Diff::Swap(
    "select u.c, m.account_id, a.external_ref",
    "select u.c, m.account_id as acct, a.external_ref",
);

/// The statements of `event-1.sql`, in order.
fn event_1() -> [Tie; 4] {
    [
        Tie {
            what: "the event-log insert",
            source: "INSERT_EVENT",
            store: statements::INSERT_EVENT,
            // pgbench has no clock to bind: the receipt time is the database's.
            diffs: &[Diff::Swap("to_timestamp($8::bigint / 1000.0)", "now()")],
        },
        Tie {
            what: "the mapping read",
            source: "CUSTOMER_LINKS",
            store: statements::CUSTOMER_LINKS,
            diffs: &[ACCT_ALIAS],
        },
        Tie {
            what: "the payment snapshot upsert",
            source: "upsert_sql(ObjectKind::Payment)",
            store: statements::upsert_sql(ObjectKind::Payment),
            diffs: &[],
        },
        Tie {
            what: "the welcome task",
            source: "INSERT_TASKS",
            store: statements::INSERT_TASKS,
            diffs: &[],
        },
    ]
}

/// The statements of `events-n.sql`, in order. Its rows are its own (n events from
/// `generate_series`, the payments and tasks from the accounts the mapping read returned, in
/// an `:accts` array), and ordered by position, since they have no names.
fn events_n() -> [Tie; 4] {
    [
        Tie {
            what: "the event-log insert",
            source: "INSERT_EVENTS",
            store: statements::INSERT_EVENTS,
            diffs: &[
                Diff::OwnRows {
                    from: "select p, e,",
                    until: " order by p, e",
                },
                Diff::Swap("order by p, e", "order by 1, 2"),
            ],
        },
        Tie {
            what: "the mapping read",
            source: "CUSTOMER_LINKS",
            store: statements::CUSTOMER_LINKS,
            // One array of the accounts, in the customers' order, for the next statements.
            diffs: &[
                Diff::Swap(
                    "select u.c, m.account_id, a.external_ref",
                    "select array_agg(m.account_id order by u.k) as accts",
                ),
                Diff::Swap("as u(c)", "with ordinality as u(c, k)"),
            ],
        },
        Tie {
            what: "the payment snapshot upsert",
            source: "upsert_sql(ObjectKind::Payment)",
            store: statements::upsert_sql(ObjectKind::Payment),
            diffs: &[
                Diff::OwnRows {
                    from: "select p, i,",
                    until: " order by p, i",
                },
                Diff::Swap("order by p, i", "order by 1, 2"),
            ],
        },
        Tie {
            what: "the welcome task",
            source: "INSERT_TASKS",
            store: statements::INSERT_TASKS,
            diffs: &[
                Diff::OwnRows {
                    from: "select a, k,",
                    until: " order by p, k, s",
                },
                Diff::Swap("order by p, k, s", "order by 5, 2, 3"),
            ],
        },
    ]
}

/// A piece of a statement's template.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    /// Text the script must have as it is.
    Text(String),
    /// A parameter: one expression (balanced, no comma outside parentheses).
    Param,
    /// The script's own rows: any balanced text.
    Rows,
}

/// Runs of whitespace as one space, none at the ends.
fn normalise(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Marks the script's own rows in a template before it is cut into pieces.
const ROWS_MARK: char = '\u{1}';

/// The store's statement as a template for the script's: its differences applied, then cut
/// into text and holes (`$n`, with its cast, is a [`Piece::Param`]).
fn template(store: &str, diffs: &[Diff]) -> Result<Vec<Piece>, String> {
    let mut text = normalise(store);
    for diff in diffs {
        match *diff {
            Diff::Swap(from, to) => {
                if text.matches(from).count() != 1 {
                    return Err(format!(
                        "the store's statement no longer has `{from}` (once), which the script writes `{to}`"
                    ));
                }
                text = text.replacen(from, to, 1);
            }
            Diff::OwnRows { from, until } => {
                let start = text.find(from);
                let end = start.and_then(|s| text[s..].find(until).map(|e| s + e));
                let (Some(start), Some(end)) = (start, end) else {
                    return Err(format!(
                        "the store's statement no longer has `{from}` … `{until}`, where the script has rows of its own"
                    ));
                };
                text.replace_range(start..end, &ROWS_MARK.to_string());
            }
        }
    }
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    let hole = |pieces: &mut Vec<Piece>, literal: &mut String, piece| {
        if !literal.is_empty() {
            pieces.push(Piece::Text(std::mem::take(literal)));
        }
        pieces.push(piece);
    };
    while let Some(c) = chars.next() {
        if c == ROWS_MARK {
            hole(&mut pieces, &mut literal, Piece::Rows);
        } else if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.next_if(char::is_ascii_digit).is_some() {}
            // The cast belongs to the parameter: the script's expression carries its own.
            if chars.peek() == Some(&':') {
                chars.next();
                if chars.next_if_eq(&':').is_none() {
                    return Err("a lone `:` after a parameter".into());
                }
                while chars
                    .next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .is_some()
                {}
                if chars.next_if_eq(&'[').is_some() && chars.next_if_eq(&']').is_none() {
                    return Err("an unclosed `[` in a parameter's cast".into());
                }
            }
            hole(&mut pieces, &mut literal, Piece::Param);
        } else {
            literal.push(c);
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

/// Whether `text` can stand for `hole`: not empty, its parentheses and brackets balanced
/// outside string literals, and for a parameter no comma outside them.
fn fits(hole: &Piece, text: &str) -> bool {
    let (mut depth, mut quoted) = (0_i32, false);
    for c in text.chars() {
        match c {
            '\'' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            ',' if depth == 0 && *hole == Piece::Param => return false,
            _ => {}
        }
    }
    !text.trim().is_empty() && depth == 0 && !quoted
}

/// Whether `text` is `pieces`, each hole standing for a text that [`fits`] it.
fn matches(pieces: &[Piece], text: &str) -> bool {
    match pieces {
        [] => text.is_empty(),
        [Piece::Text(t), rest @ ..] => text
            .strip_prefix(t.as_str())
            .is_some_and(|r| matches(rest, r)),
        [hole] => fits(hole, text),
        [hole, rest @ ..] => {
            let Some(Piece::Text(next)) = rest.first() else {
                return false; // two holes side by side: templates never have them
            };
            text.char_indices().skip(1).any(|(i, _)| {
                text[i..].starts_with(next.as_str())
                    && fits(hole, &text[..i])
                    && matches(rest, &text[i..])
            })
        }
    }
}

/// At most `n` bytes of `s` from `start`, cut at character boundaries.
fn cut(s: &str, start: usize, n: usize) -> &str {
    let mut start = start.min(s.len());
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + n).min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[start..end]
}

/// Where a script's statement parts from its template: both texts around that place.
fn parting(pieces: &[Piece], text: &str) -> String {
    let common = |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let mut pos = 0;
    let mut after_hole = false;
    for piece in pieces {
        let Piece::Text(t) = piece else {
            after_hole = true;
            continue;
        };
        let candidates: Vec<usize> = if after_hole {
            (pos + 1..text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect()
        } else {
            vec![pos]
        };
        let found = candidates
            .iter()
            .find(|&&i| text[i..].starts_with(t.as_str()));
        match found {
            Some(&i) => pos = i + t.len(),
            None => {
                let (at, n) = candidates
                    .iter()
                    .map(|&i| (i, common(t, &text[i..])))
                    .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))
                    .unwrap_or((pos, 0));
                // The same context before the parting place on both sides.
                let before = n.min(40);
                return format!(
                    "  store:  …{}…\n  script: …{}…",
                    cut(t, n - before, before + 80),
                    cut(text, at + n - before, before + 80)
                );
            }
        }
        after_hole = false;
    }
    if after_hole || pos == text.len() {
        format!(
            "  store:  {}\n  script: {}",
            pieces_text(pieces),
            cut(text, 0, 600)
        )
    } else {
        format!(
            "  the script goes on after the store's statement ends: …{}",
            cut(text, pos, 120)
        )
    }
}

/// A template as text, holes as `$?` and `…rows…`.
fn pieces_text(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.as_str(),
            Piece::Param => "$?",
            Piece::Rows => "…rows…",
        })
        .collect()
}

/// The SQL statements of a pgbench script, whitespace normalised, without the `--` comments,
/// the meta-commands (`\set`) and what ends a statement (`;` or `\gset`).
fn script_statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in script.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with("--")
            || (current.is_empty() && line.starts_with('\\'))
        {
            continue;
        }
        current.push_str(line);
        current.push(' ');
        let so_far = current.trim_end();
        if let Some(statement) = so_far
            .strip_suffix(';')
            .or_else(|| so_far.strip_suffix("\\gset"))
        {
            statements.push(normalise(statement));
            current.clear();
        }
    }
    statements
}

/// What does not match between the script `file` and its `ties`, one message each.
fn mismatches(file: &str, script: &str, ties: &[Tie]) -> Vec<String> {
    let statements = script_statements(script);
    let shape = statements.len() == ties.len() + 2
        && statements.first().map(String::as_str) == Some("BEGIN")
        && statements.last().map(String::as_str) == Some("COMMIT");
    if !shape {
        let found: Vec<String> = statements
            .iter()
            .map(|s| cut(s, 0, 40).to_owned())
            .collect();
        let wanted: Vec<&str> = ties.iter().map(|t| t.what).collect();
        return vec![format!(
            "{file}: expected BEGIN, {} and COMMIT, one statement each; found {} statements: {found:?}",
            wanted.join(", "),
            statements.len()
        )];
    }
    let mut failures = Vec::new();
    for (i, (tie, statement)) in ties.iter().zip(&statements[1..]).enumerate() {
        let head = format!(
            "{file}, statement {} ({}), against paysync_store::statements::{}",
            i + 2,
            tie.what,
            tie.source
        );
        match template(tie.store, tie.diffs) {
            Err(e) => failures.push(format!(
                "{head}: {e}; update the script and its differences in crates/paysync-bench/src/pg/tie.rs"
            )),
            Ok(pieces) if !matches(&pieces, statement) => failures.push(format!(
                "{head}: the script no longer runs the worker's statement; they part here:\n{}\nchange the script to match the store's statement (or list a deliberate difference in crates/paysync-bench/src/pg/tie.rs)",
                parting(&pieces, statement)
            )),
            Ok(_) => {}
        }
    }
    failures
}

#[test]
fn the_pgbench_scripts_run_the_worker_statements_as_the_store_writes_them() {
    let mut failures = mismatches("pgbench/event-1.sql", EVENT_SCRIPT, &event_1());
    failures.extend(mismatches(
        "pgbench/events-n.sql",
        EVENTS_SCRIPT,
        &events_n(),
    ));
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n\n"));
}

#[test]
fn a_parameter_stands_for_one_expression_with_its_own_cast() {
    let pieces = template("values ($1, ($2::text)::json, $3::int8[])", &[]).unwrap();
    assert_eq!(
        pieces,
        [
            Piece::Text("values (".into()),
            Piece::Param,
            Piece::Text(", (".into()),
            Piece::Param,
            Piece::Text(")::json, ".into()),
            Piece::Param,
            Piece::Text(")".into()),
        ]
    );
    assert!(matches(
        &pieces,
        "values ('a' || :x, (translate('{\"a\"^1}', '^', ':'))::json, array[:acct]::int8[])"
    ));
    assert!(!matches(&pieces, "values ('a', 'b', (t)::json, array[1])"));
    assert!(!matches(&pieces, "values ('a', (t)::json)"));
}

#[test]
fn a_changed_clause_is_reported_where_the_two_part() {
    let diffs = [Diff::Swap("do nothing", "do nothing")];
    let pieces = template(
        "insert into t (a) values ($1) on conflict (a) do nothing",
        &diffs,
    )
    .unwrap();
    let script = "insert into t (a) values (1) on conflict (a, b) do nothing";
    assert!(!matches(&pieces, script));
    let report = parting(&pieces, script);
    assert!(
        report.contains("store:  …) on conflict (a) do nothing…"),
        "{report}"
    );
    assert!(
        report.contains("script: …) on conflict (a, b) do nothing…"),
        "{report}"
    );
    let gone = template("insert into t (a) values ($1)", &diffs).unwrap_err();
    assert!(gone.contains("no longer has `do nothing`"), "{gone}");
}
