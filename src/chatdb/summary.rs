//! `message.message_summary_info`: the binary plist where Messages keeps a
//! message's edit history and unsent parts (reference section 13.4).
//!
//! This module owns reading the few keys a bridge needs: `ep` (edited part
//! indexes), `rp` (retracted, i.e. unsent, part indexes) and `ec` (the edit
//! events per part, to count revisions). Everything else in the plist is
//! ignored; a blob that is not a plist is an error the caller logs, never a
//! panic.

use plist::Value;

/// What `message_summary_info` says about edits and unsends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummaryInfo {
    /// Part indexes that were edited (`ep`).
    pub edited_parts: Vec<i64>,
    /// Part indexes that were unsent (`rp`).
    pub retracted_parts: Vec<i64>,
    /// Number of edit events over all parts (`ec`), original versions included.
    pub edit_events: usize,
}

/// Why the plist could not be read.
#[derive(Debug, thiserror::Error)]
#[error("message_summary_info is not a readable property list: {0}")]
pub struct SummaryError(#[from] plist::Error);

/// Parses the blob. An empty blob is an empty summary.
pub fn parse(blob: &[u8]) -> Result<SummaryInfo, SummaryError> {
    if blob.is_empty() {
        return Ok(SummaryInfo::default());
    }
    let value = Value::from_reader(std::io::Cursor::new(blob))?;
    let Some(dict) = value.as_dictionary() else {
        return Ok(SummaryInfo::default());
    };
    let indexes = |key: &str| -> Vec<i64> {
        dict.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| {
                        v.as_signed_integer()
                            .or_else(|| v.as_string().and_then(|s| s.parse().ok()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let edit_events = dict
        .get("ec")
        .and_then(Value::as_dictionary)
        .map(|parts| {
            parts
                .values()
                .filter_map(Value::as_array)
                .map(Vec::len)
                .sum()
        })
        .unwrap_or(0);
    Ok(SummaryInfo {
        edited_parts: indexes("ep"),
        retracted_parts: indexes("rp"),
        edit_events,
    })
}

/// One version of an edited part: (seconds since 2001, its typedstream).
pub type EditVersion = (f64, Vec<u8>);

/// Writes a summary plist as Messages does for an edit or an unsend (used by
/// the simulator): the edited part with its versions, oldest first, and the
/// retracted parts.
pub fn encode(edited_part: Option<(i64, Vec<EditVersion>)>, retracted: &[i64]) -> Vec<u8> {
    let mut dict = plist::Dictionary::new();
    if let Some((part, versions)) = edited_part {
        let events: Vec<Value> = versions
            .into_iter()
            .map(|(d, t)| {
                let mut e = plist::Dictionary::new();
                e.insert("d".into(), Value::Real(d));
                e.insert("t".into(), Value::Data(t));
                Value::Dictionary(e)
            })
            .collect();
        let mut ec = plist::Dictionary::new();
        ec.insert(part.to_string(), Value::Array(events));
        dict.insert("ec".into(), Value::Dictionary(ec));
        dict.insert("ep".into(), Value::Array(vec![Value::Integer(part.into())]));
    }
    if !retracted.is_empty() {
        dict.insert(
            "rp".into(),
            Value::Array(
                retracted
                    .iter()
                    .map(|p| Value::Integer((*p).into()))
                    .collect(),
            ),
        );
    }
    dict.insert("ust".into(), Value::Boolean(true));
    let mut out = Vec::new();
    // Writing a dictionary into memory cannot fail.
    let _ = Value::Dictionary(dict).to_writer_binary(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_and_an_unsend_round_trip() {
        let blob = encode(Some((0, vec![(1.0, vec![1]), (2.0, vec![2])])), &[1]);
        let info = parse(&blob).expect("plist");
        assert_eq!(info.edited_parts, vec![0]);
        assert_eq!(info.retracted_parts, vec![1]);
        assert_eq!(info.edit_events, 2);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"bplist00\xff\xff").is_err());
        assert_eq!(parse(b"").expect("empty"), SummaryInfo::default());
    }
}
