//! Keeps `docs/protocol.md` honest: every JSON example in it is parsed with
//! this crate's types and must come back out unchanged.
//!
//! - ```` ```json frame ```` blocks: [`frame::decode`] succeeds and
//!   `frame.to_value()` equals the example (canonical round trip);
//! - ```` ```json http <Type> ```` blocks: the body deserializes into
//!   `whatsnap_proto::api::<Type>` and re-serializes to the same value;
//! - ```` ```json close ```` blocks: the same with [`close::CloseReason`].
//!
//! Every frame type of [`frame::FRAME_TYPES`] and every API body type must
//! have at least one example, so nothing new can go undocumented.

use std::collections::BTreeSet;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use whatsnap_proto::{api, close, frame};

const SPEC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

/// The API body types the spec must show, by their Rust name.
const HTTP_TYPES: &[&str] = &[
    "PairRequest",
    "PairResponse",
    "ApiError",
    "CreateAccountRequest",
    "CreateAccountResponse",
    "PairingCode",
    "AccountView",
    "ContactView",
    "SetContactTagRequest",
    "SendMessageRequest",
    "MessageView",
];

/// One fenced block of the spec.
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string after the backticks, trimmed.
    info: String,
    /// The block's content.
    text: String,
}

impl Block {
    /// How failure messages name the block: path, line and first line.
    fn name(&self) -> String {
        let first = self.text.lines().next().unwrap_or("").trim();
        let first: String = if first.chars().count() > 90 {
            let mut cut: String = first.chars().take(90).collect();
            cut.push('…');
            cut
        } else {
            first.to_owned()
        };
        format!(
            "docs/protocol.md:{} (```{}) starting `{first}`",
            self.line, self.info
        )
    }

    /// The content as a JSON value.
    fn json(&self) -> Result<Value, String> {
        serde_json::from_str(&self.text).map_err(|e| format!("not valid JSON: {e}"))
    }
}

fn spec() -> String {
    std::fs::read_to_string(SPEC_PATH)
        .unwrap_or_else(|e| panic!("cannot read the protocol spec at {SPEC_PATH}: {e}"))
}

/// Every fenced code block of a Markdown text.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, String, Vec<&str>)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((index + 1, info.trim().to_owned(), Vec::new()));
                }
            }
            Some((start, info, mut body)) => {
                if trimmed == "```" {
                    out.push(Block {
                        line: start,
                        info,
                        text: body.join("\n"),
                    });
                } else {
                    body.push(line);
                    open = Some((start, info, body));
                }
            }
        }
    }
    if let Some((start, info, _)) = open {
        panic!("docs/protocol.md:{start}: the ```{info} block is never closed");
    }
    out
}

fn blocks_tagged(markdown: &str, tag: &str) -> Vec<Block> {
    blocks(markdown)
        .into_iter()
        .filter(|b| b.info == tag)
        .collect()
}

/// Panics with every failure at once, each naming its block.
fn report(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} spec example(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Deserializes `value` into `T` and serializes it back; the result must be
/// the same value.
fn round_trip<T: Serialize + DeserializeOwned>(value: &Value) -> Result<(), String> {
    let typed: T =
        serde_json::from_value(value.clone()).map_err(|e| format!("does not deserialize: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("does not serialize: {e}"))?;
    if &back == value {
        Ok(())
    } else {
        Err(format!(
            "is not canonical: re-serializes as\n  {back}\ninstead of\n  {value}"
        ))
    }
}

fn check_frame(block: &Block) -> Result<String, String> {
    let value = block.json()?;
    let decoded = frame::decode(&block.text).map_err(|e| format!("does not decode: {e}"))?;
    let back = decoded.to_value();
    if back != value {
        return Err(format!(
            "is not canonical: re-encodes as\n  {back}\ninstead of\n  {value}"
        ));
    }
    let ty = decoded.body.type_name();
    match (decoded.body.stream(), decoded.seq) {
        (Some(_), None) => return Err(format!("`{ty}` is durable but has no `seq`")),
        (None, Some(_)) => return Err(format!("`{ty}` is ephemeral but has a `seq`")),
        _ => {}
    }
    Ok(ty.to_owned())
}

fn check_http(type_name: &str, block: &Block) -> Result<(), String> {
    let value = block.json()?;
    match type_name {
        "PairRequest" => round_trip::<api::PairRequest>(&value),
        "PairResponse" => round_trip::<api::PairResponse>(&value),
        "ApiError" => round_trip::<api::ApiError>(&value),
        "CreateAccountRequest" => round_trip::<api::CreateAccountRequest>(&value),
        "CreateAccountResponse" => round_trip::<api::CreateAccountResponse>(&value),
        "PairingCode" => round_trip::<api::PairingCode>(&value),
        "AccountView" => round_trip::<api::AccountView>(&value),
        "ContactView" => round_trip::<api::ContactView>(&value),
        "SetContactTagRequest" => round_trip::<api::SetContactTagRequest>(&value),
        "SendMessageRequest" => round_trip::<api::SendMessageRequest>(&value),
        "MessageView" => round_trip::<api::MessageView>(&value),
        other => Err(format!(
            "names `{other}`, which is not an api body type this test knows ({})",
            HTTP_TYPES.join(", ")
        )),
    }
}

#[test]
fn the_spec_has_frame_and_http_examples() {
    let spec = spec();
    assert!(
        blocks_tagged(&spec, "json frame").len() >= frame::FRAME_TYPES.len(),
        "docs/protocol.md should have at least one ```json frame block per frame type"
    );
    assert!(
        blocks(&spec)
            .iter()
            .any(|b| b.info.starts_with("json http ")),
        "docs/protocol.md has no ```json http <Type> blocks"
    );
}

#[test]
fn every_frame_example_round_trips() {
    let spec = spec();
    let failures: Vec<String> = blocks_tagged(&spec, "json frame")
        .iter()
        .filter_map(|b| check_frame(b).err().map(|e| format!("{}: {e}", b.name())))
        .collect();
    report(&failures);
}

#[test]
fn every_frame_type_has_an_example() {
    let spec = spec();
    let documented: BTreeSet<String> = blocks_tagged(&spec, "json frame")
        .iter()
        .filter_map(|b| check_frame(b).ok())
        .collect();
    let missing: Vec<&str> = frame::FRAME_TYPES
        .iter()
        .copied()
        .filter(|ty| !documented.contains(*ty))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md has no valid ```json frame example of: {}",
        missing.join(", ")
    );
}

#[test]
fn every_http_example_round_trips() {
    let spec = spec();
    let mut failures = Vec::new();
    for block in blocks(&spec) {
        if let Some(type_name) = block.info.strip_prefix("json http ")
            && let Err(e) = check_http(type_name.trim(), &block)
        {
            failures.push(format!("{}: {e}", block.name()));
        }
    }
    report(&failures);
}

#[test]
fn every_http_body_type_has_an_example() {
    let spec = spec();
    let documented: BTreeSet<String> = blocks(&spec)
        .iter()
        .filter_map(|b| {
            b.info
                .strip_prefix("json http ")
                .map(|t| t.trim().to_owned())
        })
        .collect();
    let missing: Vec<&str> = HTTP_TYPES
        .iter()
        .copied()
        .filter(|ty| !documented.contains(*ty))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md has no ```json http example of: {}",
        missing.join(", ")
    );
}

#[test]
fn every_close_reason_example_round_trips_and_fits() {
    let spec = spec();
    let mut failures = Vec::new();
    for block in blocks_tagged(&spec, "json close") {
        let checked = block.json().and_then(|value| {
            round_trip::<close::CloseReason>(&value)?;
            let reason = close::CloseReason::parse(&block.text)
                .ok_or_else(|| "is not a close reason".to_owned())?;
            let text = reason.to_reason_text();
            if close::CloseReason::parse(&text).as_ref() == Some(&reason) {
                Ok(())
            } else {
                Err(format!("does not fit the 123-byte close reason: {text}"))
            }
        });
        if let Err(e) = checked {
            failures.push(format!("{}: {e}", block.name()));
        }
    }
    report(&failures);
}

#[test]
fn no_json_example_escapes_the_checks() {
    let spec = spec();
    let failures: Vec<String> = blocks(&spec)
        .iter()
        .filter(|b| b.info.starts_with("json"))
        .filter(|b| {
            !(b.info == "json frame" || b.info == "json close" || b.info.starts_with("json http "))
        })
        .map(|b| {
            format!(
                "{}: a JSON block must be tagged `json frame`, `json http <Type>` or `json close`",
                b.name()
            )
        })
        .collect();
    report(&failures);
}

#[test]
fn every_error_code_is_documented() {
    use frame::error_code::*;
    let spec = spec();
    let codes = [
        BAD_JSON,
        BAD_ENVELOPE,
        UNSUPPORTED_VERSION,
        UNKNOWN_TYPE,
        BAD_DATA,
        BEFORE_WELCOME,
        SEQ_GAP,
        BAD_SEQ,
    ];
    let missing: Vec<&str> = codes
        .into_iter()
        .filter(|code| !spec.contains(&format!("| `{code}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md section 7 has no table row for error code(s): {}",
        missing.join(", ")
    );
}

#[test]
fn the_close_code_table_matches_action_for() {
    let spec = spec();
    let codes = [
        close::NORMAL,
        close::GOING_AWAY,
        close::MESSAGE_TOO_BIG,
        close::SERVICE_RESTART,
        close::MALFORMED_HELLO,
        close::UNAUTHORIZED,
        close::FORBIDDEN,
        close::REPLACED,
        close::UNSUPPORTED_VERSION,
        close::RATE_LIMITED,
    ];
    let mut failures = Vec::new();
    for code in codes {
        let prefix = format!("| `{code}` |");
        let Some(row) = spec.lines().find(|l| l.starts_with(&prefix)) else {
            failures.push(format!(
                "close code {code} has no row in the close code table"
            ));
            continue;
        };
        let action = close::action_for(code);
        let ok = match action {
            close::CloseAction::Reconnect => row.contains("econnect") && !row.contains("**Stop**"),
            stop => row.contains("**Stop**") && row.contains(&format!("(`{stop:?}`)")),
        };
        if !ok {
            failures.push(format!(
                "close code {code}: action_for says {action:?}, the table row says: {row}"
            ));
        }
    }
    report(&failures);
}

#[test]
fn the_block_parser_reports_lines() {
    let md = "intro\n\n```json frame\n{\"a\":1}\n```\n\ntext\n```json http X\n{}\n```\n";
    let found = blocks(md);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].line, 3);
    assert_eq!(found[0].info, "json frame");
    assert_eq!(found[0].text, "{\"a\":1}");
    assert_eq!(found[1].line, 8);
    assert!(
        found[0].name().starts_with("docs/protocol.md:3 "),
        "{}",
        found[0].name()
    );
}
