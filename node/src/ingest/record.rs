//! The records ingest writes: an event's player and channel records, and the bounded
//! dead letter of a rejected input.
//!
//! Every record is bounded so that Kafka accepts it: a dead letter keeps at most
//! [`MAX_DEAD_LETTER_BYTES`] of its input, and the rejection it carries is clipped (serde
//! quotes the input in its messages, an unknown field's name for one), so rejecting an
//! input of any size never fails the transaction it shares with other requests.
//!
//! Not for: writing them (see `producer`) or deciding what is rejected (see `api`, `event`).

use std::borrow::Cow;

use crate::config::MAX_EVENT_BYTES_LIMIT;
use crate::event::{Event, Rejection};

/// The largest record ingest hands to Kafka (payload, key and headers), with room left for
/// the record batch's framing under librdkafka's limit.
pub const MAX_RECORD_BYTES: usize = 990_000;
/// The largest dead-letter payload, and so the ceiling of `ingest.max_event_bytes`: with
/// its clipped headers a dead letter stays far under [`MAX_RECORD_BYTES`].
pub const MAX_DEAD_LETTER_BYTES: usize = MAX_EVENT_BYTES_LIMIT;
/// Most bytes of a rejection's reason kept, in dead-letter headers and in answers: serde's
/// messages quote the input (an unknown field's name), which can be as long as the event.
pub const MAX_REASON_BYTES: usize = 1024;
/// Most bytes of a rejection's field name kept (an unknown field is named by itself).
pub const MAX_FIELD_BYTES: usize = 256;

/// Which topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Players,
    Channels,
    DeadLetter,
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub target: Target,
    pub key: String,
    pub payload: Vec<u8>,
    /// Dead-letter records carry the rejection (field and reason clipped).
    pub rejection: Option<Rejection>,
    /// Set when `payload` holds only the start of the rejected input.
    pub truncated: Option<Truncation>,
    /// The W3C trace context of the sampled span that wrote it (see `telemetry`).
    pub traceparent: Option<String>,
}

/// What a truncated dead letter left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// The whole input's length in bytes, when known (a body over the size limit is not
    /// read to its end).
    pub original_len: Option<usize>,
}

/// Header names of dead-letter records (docs/API.md lists them).
pub const HEADER_FIELD: &str = "tally-field";
pub const HEADER_REASON: &str = "tally-reason";
/// Present on a dead letter cut short: the input's whole length in bytes, as the
/// consumer's dead letters give it (`dead_letter`), or [`LENGTH_UNKNOWN`].
pub const HEADER_TRUNCATED: &str = "tally-truncated";
/// [`HEADER_TRUNCATED`]'s value when the input was cut off before its length was known.
pub const LENGTH_UNKNOWN: &str = "unknown";

impl OutRecord {
    /// The headers this record is written with: (name, value).
    pub fn headers(&self) -> Vec<(&'static str, Cow<'_, [u8]>)> {
        let mut out = Vec::new();
        if let Some(r) = &self.rejection {
            out.push((HEADER_FIELD, Cow::Borrowed(r.field.as_bytes())));
            out.push((HEADER_REASON, Cow::Borrowed(r.reason.as_bytes())));
        }
        if let Some(t) = &self.truncated {
            let length = match t.original_len {
                Some(n) => Cow::Owned(n.to_string().into_bytes()),
                None => Cow::Borrowed(LENGTH_UNKNOWN.as_bytes()),
            };
            out.push((HEADER_TRUNCATED, length));
        }
        if let Some(tp) = &self.traceparent {
            out.push((crate::telemetry::TRACEPARENT, Cow::Borrowed(tp.as_bytes())));
        }
        out
    }

    /// Bytes this record costs against Kafka's per-record limit: payload, key, headers.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers()
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        self.payload.len() + self.key.len() + headers
    }
}

/// The records one valid event produces: the player record, plus channel records.
pub fn records_for(event: &Event) -> Vec<OutRecord> {
    let mut out = vec![OutRecord {
        target: Target::Players,
        key: event.player.to_string(),
        payload: event.to_json(),
        rejection: None,
        truncated: None,
        traceparent: None,
    }];
    out.extend(
        event
            .channel_records()
            .into_iter()
            .map(|(channel, e)| OutRecord {
                target: Target::Channels,
                key: channel.into(),
                payload: e.to_json(),
                rejection: None,
                truncated: None,
                traceparent: None,
            }),
    );
    out
}

/// The dead-letter record of a rejected input. `received` is what arrived of the input and
/// `input_len` its whole length, when known (None: the input was cut off unread). At most
/// `keep` bytes of it are kept, never more than [`MAX_DEAD_LETTER_BYTES`]; a copy that
/// holds less than the whole input says so in its headers, so rejecting an input of any
/// size writes a record Kafka accepts.
pub fn dead_letter(
    received: &[u8],
    input_len: Option<usize>,
    rejection: &Rejection,
    keep: usize,
) -> OutRecord {
    let keep = keep.min(MAX_DEAD_LETTER_BYTES).min(received.len());
    let whole = input_len == Some(received.len()) && keep == received.len();
    OutRecord {
        target: Target::DeadLetter,
        key: String::new(),
        payload: received[..keep].to_vec(),
        rejection: Some(clip_rejection(rejection)),
        truncated: (!whole).then_some(Truncation {
            original_len: input_len,
        }),
        traceparent: None,
    }
}

/// `rejection` with its field and reason cut to [`MAX_FIELD_BYTES`] and
/// [`MAX_REASON_BYTES`]: what answers and dead letters carry.
pub fn clip_rejection(rejection: &Rejection) -> Rejection {
    Rejection::new(
        clip(&rejection.field, MAX_FIELD_BYTES),
        clip(&rejection.reason, MAX_REASON_BYTES),
    )
}

/// `text` if it has at most `max` bytes, else its longest start (cut between characters)
/// that fits with a trailing `…`.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clipping_cuts_between_characters_and_marks_the_cut() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("exactly10!", 10), "exactly10!");
        assert_eq!(clip("abcdefghijk", 10), "abcdefg…");
        // "é" is two bytes: the cut moves back to a character boundary.
        let clipped = clip("ééééééé", 10);
        assert_eq!(clipped, "ééé…");
        assert!(clipped.len() <= 10);
    }

    proptest! {
        /// Whatever the input and the limit, a dead letter is a prefix of the input of at
        /// most the limit, fits a Kafka record, and says it is cut exactly when it is.
        #[test]
        fn a_dead_letter_is_a_bounded_prefix_that_says_whether_it_is_whole(
            len in prop_oneof![0usize..2048, 500_000usize..1_200_000],
            keep in prop_oneof![0usize..2048, 500_000usize..2_000_000],
            known in any::<bool>(),
            reason_len in prop_oneof![0usize..64, 1000usize..3_000_000],
        ) {
            let input = vec![b'x'; len];
            let rejection = Rejection::new("f".repeat(reason_len / 2), "r".repeat(reason_len));
            let input_len = known.then_some(len);
            let rec = dead_letter(&input, input_len, &rejection, keep);
            let kept = keep.min(MAX_DEAD_LETTER_BYTES).min(len);
            prop_assert_eq!(rec.payload.len(), kept);
            prop_assert!(input.starts_with(&rec.payload));
            prop_assert!(rec.size() <= MAX_RECORD_BYTES);
            let r = rec.rejection.as_ref().unwrap();
            prop_assert!(r.reason.len() <= MAX_REASON_BYTES && r.field.len() <= MAX_FIELD_BYTES);
            let whole = known && kept == len;
            prop_assert_eq!(rec.truncated.is_none(), whole);
            let headers = rec.headers();
            let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_vec());
            let length = if known { len.to_string() } else { LENGTH_UNKNOWN.to_string() };
            prop_assert_eq!(header(HEADER_TRUNCATED), (!whole).then(|| length.into_bytes()));
        }
    }
}
