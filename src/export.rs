//! Exports: CSV (chosen columns, or the `ld-audit` preset of LaunchDarkly's audit CSV
//! script) and NDJSON, streamed oldest first in constant memory.
//!
//! CSV is RFC 4180 (fields with commas, quotes or line breaks are quoted, quotes doubled),
//! UTF-8, and safe to open in a spreadsheet: a cell that begins with `=`, `+`, `-`, `@`, a
//! tab or a carriage return gets a leading `'` so it is never taken for a formula.

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::event::{listing_rep, Source};
use crate::store::{ExportRow, Filter, Store, StoreError};

/// A CSV column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    Date,
    Rfc3339,
    Kind,
    Name,
    Title,
    Description,
    ShortDescription,
    Comment,
    Action,
    Resource,
    MemberId,
    MemberEmail,
    MemberName,
    MemberFirstName,
    MemberLastName,
    TokenId,
    TokenName,
    Source,
    Actor,
    Summary,
}

/// Every column, by its `columns=` name.
pub const COLUMNS: &[(&str, Column)] = &[
    ("id", Column::Id),
    ("date", Column::Date),
    ("rfc3339", Column::Rfc3339),
    ("kind", Column::Kind),
    ("name", Column::Name),
    ("title", Column::Title),
    ("description", Column::Description),
    ("short_description", Column::ShortDescription),
    ("comment", Column::Comment),
    ("action", Column::Action),
    ("resource", Column::Resource),
    ("member_id", Column::MemberId),
    ("member_email", Column::MemberEmail),
    ("member_name", Column::MemberName),
    ("member_first_name", Column::MemberFirstName),
    ("member_last_name", Column::MemberLastName),
    ("token_id", Column::TokenId),
    ("token_name", Column::TokenName),
    ("source", Column::Source),
    ("actor", Column::Actor),
    ("summary", Column::Summary),
];

/// Columns when `columns=` is not given.
pub const DEFAULT_COLUMNS: &[Column] = &[
    Column::Id,
    Column::Date,
    Column::Rfc3339,
    Column::Kind,
    Column::Name,
    Column::Title,
    Column::Action,
    Column::Resource,
    Column::MemberEmail,
];

/// The header of the `ld-audit` preset.
pub const LD_AUDIT_HEADER: &[&str] = &[
    "user_email",
    "user_first_name",
    "user_last_name",
    "date",
    "formatted_date",
    "kind",
    "name",
    "action",
    "resource",
    "description",
    "id",
];

impl Column {
    fn name(self) -> &'static str {
        COLUMNS
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("", |(n, _)| n)
    }

    fn needs_raw(self) -> bool {
        matches!(
            self,
            Column::Description
                | Column::ShortDescription
                | Column::Comment
                | Column::MemberName
                | Column::MemberFirstName
                | Column::MemberLastName
                | Column::TokenName
        )
    }
}

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Csv(Vec<Column>),
    /// LaunchDarkly's audit CSV script: one row per access, `n/a` for a missing member.
    LdAudit,
    /// One `AuditLogEntryListingRep` per line.
    Ndjson,
}

impl Format {
    /// Whether rows need the stored body.
    pub fn needs_raw(&self) -> bool {
        match self {
            Format::Csv(cols) => cols.iter().any(|c| c.needs_raw()),
            Format::LdAudit | Format::Ndjson => true,
        }
    }

    /// A CSV format from `columns=` and `preset=` (either, not both).
    pub fn csv(columns: Option<&str>, preset: Option<&str>) -> Result<Format, String> {
        match (columns, preset) {
            (Some(_), Some(_)) => Err("give `columns` or `preset`, not both".into()),
            (None, Some("ld-audit")) => Ok(Format::LdAudit),
            (None, Some(p)) => Err(format!(
                "parameter `preset`: unknown preset {p:?}; known: ld-audit"
            )),
            (Some(list), None) => {
                let mut cols = Vec::new();
                for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let col = COLUMNS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, c)| *c)
                        .ok_or_else(|| {
                            let known: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
                            format!(
                                "parameter `columns`: unknown column {name:?}; known: {}",
                                known.join(", ")
                            )
                        })?;
                    cols.push(col);
                }
                if cols.is_empty() {
                    return Err("parameter `columns` names no column".into());
                }
                Ok(Format::Csv(cols))
            }
            (None, None) => Ok(Format::Csv(DEFAULT_COLUMNS.to_vec())),
        }
    }
}

/// A cell made safe to open in a spreadsheet (see the module documentation).
pub fn safe_cell(s: &str) -> std::borrow::Cow<'_, str> {
    match s.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => std::borrow::Cow::Owned(format!("'{s}")),
        _ => std::borrow::Cow::Borrowed(s),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn accesses(row: &ExportRow) -> Vec<(String, String)> {
    serde_json::from_str::<Vec<crate::event::Access>>(&row.accesses)
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.action, a.resource))
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = match cur.get(p) {
            Some(x) => x,
            None => return "",
        };
    }
    cur.as_str().unwrap_or("")
}

/// A byte buffer the CSV writer appends to and the encoder drains.
#[derive(Clone, Default)]
struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Buffer {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl std::io::Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.with(|b| b.extend_from_slice(data));
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Turns rows into bytes of one format.
pub struct Encoder {
    format: Format,
    buf: Buffer,
    csv: csv::Writer<Buffer>,
    header_done: bool,
    /// Rows (lines) written so far.
    pub rows: u64,
}

impl Encoder {
    pub fn new(format: Format) -> Self {
        let buf = Buffer::default();
        Self {
            format,
            csv: csv::Writer::from_writer(buf.clone()),
            buf,
            header_done: false,
            rows: 0,
        }
    }

    fn record<'a>(
        &mut self,
        cells: impl IntoIterator<Item = std::borrow::Cow<'a, str>>,
    ) -> Result<(), String> {
        for cell in cells {
            self.csv
                .write_field(safe_cell(&cell).as_bytes())
                .map_err(|e| e.to_string())?;
        }
        // An empty record ends the one the fields above started.
        self.csv
            .write_record(None::<&[u8]>)
            .map_err(|e| e.to_string())?;
        self.rows += 1;
        Ok(())
    }

    fn header(&mut self) -> Result<(), String> {
        if self.header_done {
            return Ok(());
        }
        self.header_done = true;
        match &self.format {
            Format::Csv(cols) => {
                let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                self.csv.write_record(&names).map_err(|e| e.to_string())
            }
            Format::LdAudit => self
                .csv
                .write_record(LD_AUDIT_HEADER)
                .map_err(|e| e.to_string()),
            Format::Ndjson => Ok(()),
        }
    }

    /// Appends one stored event.
    pub fn push(&mut self, row: &ExportRow) -> Result<(), String> {
        self.header()?;
        // Taken out for the call so rows can be written while it is read.
        let format = std::mem::replace(&mut self.format, Format::Ndjson);
        let result = self.encode(&format, row);
        self.format = format;
        result
    }

    fn encode(&mut self, format: &Format, row: &ExportRow) -> Result<(), String> {
        let raw: Value = match &row.raw {
            Some(r) if format.needs_raw() => serde_json::from_str(r).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        match format {
            Format::Ndjson => {
                // LaunchDarkly's events as its listing reps (as `/api/v2/auditlog` gives
                // them); the other sources' as envelopes, which name their source.
                let raw = row.raw.as_deref().unwrap_or("{}");
                let line = if row.source == Source::LaunchDarkly.as_str() {
                    serde_json::to_vec(&listing_rep(raw, row.date, &row.id))
                        .map_err(|e| e.to_string())?
                } else {
                    let mut out = Vec::new();
                    crate::event::write_envelope(
                        &mut out,
                        &crate::event::Envelope {
                            source: &row.source,
                            id: &row.id,
                            date: row.date,
                            actor: &row.actor,
                            action: &row.action,
                            resource: &row.resource,
                            summary: &row.summary,
                            raw,
                        },
                    );
                    out
                };
                self.csv_flush_into_ndjson(&line);
                self.rows += 1;
                Ok(())
            }
            Format::Csv(cols) => {
                let acc = if cols
                    .iter()
                    .any(|c| matches!(c, Column::Action | Column::Resource))
                {
                    accesses(row)
                } else {
                    Vec::new()
                };
                let join = |f: fn(&(String, String)) -> &str| {
                    acc.iter().map(f).collect::<Vec<_>>().join(";")
                };
                let cells: Vec<std::borrow::Cow<'_, str>> = cols
                    .iter()
                    .map(|c| -> std::borrow::Cow<'_, str> {
                        match c {
                            Column::Id => row.id.as_str().into(),
                            Column::Date => row.date.to_string().into(),
                            Column::Rfc3339 => rfc3339(row.date).into(),
                            Column::Kind => row.kind.as_str().into(),
                            Column::Name => row.name.as_str().into(),
                            Column::Title => row.title.as_str().into(),
                            Column::Description => str_at(&raw, &["description"]).to_owned().into(),
                            Column::ShortDescription => {
                                str_at(&raw, &["shortDescription"]).to_owned().into()
                            }
                            Column::Comment => str_at(&raw, &["comment"]).to_owned().into(),
                            Column::Action => join(|a| a.0.as_str()).into(),
                            Column::Resource => join(|a| a.1.as_str()).into(),
                            Column::MemberId => row.member_id.clone().unwrap_or_default().into(),
                            Column::MemberEmail => {
                                row.member_email.clone().unwrap_or_default().into()
                            }
                            Column::MemberName => {
                                let first = str_at(&raw, &["member", "firstName"]);
                                let last = str_at(&raw, &["member", "lastName"]);
                                format!("{first} {last}").trim().to_owned().into()
                            }
                            Column::MemberFirstName => {
                                str_at(&raw, &["member", "firstName"]).to_owned().into()
                            }
                            Column::MemberLastName => {
                                str_at(&raw, &["member", "lastName"]).to_owned().into()
                            }
                            Column::TokenId => row.token_id.clone().unwrap_or_default().into(),
                            Column::TokenName => str_at(&raw, &["token", "name"]).to_owned().into(),
                            Column::Source => row.source.as_str().into(),
                            Column::Actor => row.actor.as_str().into(),
                            Column::Summary => row.summary.as_str().into(),
                        }
                    })
                    .collect();
                self.record(cells)
            }
            Format::LdAudit => {
                let member = raw.get("member").filter(|m| m.is_object());
                let (email, first, last) = match member {
                    Some(m) => (
                        str_at(m, &["email"]).to_owned(),
                        str_at(m, &["firstName"]).to_owned(),
                        str_at(m, &["lastName"]).to_owned(),
                    ),
                    None => ("n/a".to_owned(), "n/a".to_owned(), "n/a".to_owned()),
                };
                let formatted = chrono::DateTime::from_timestamp_millis(row.date)
                    .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                let description = str_at(&raw, &["description"]).to_owned();
                for (action, resource) in accesses(row) {
                    let cells = [
                        email.clone(),
                        first.clone(),
                        last.clone(),
                        row.date.to_string(),
                        formatted.clone(),
                        row.kind.clone(),
                        row.name.clone(),
                        action,
                        resource,
                        description.clone(),
                        row.id.clone(),
                    ];
                    self.record(cells.into_iter().map(std::borrow::Cow::Owned))?;
                }
                Ok(())
            }
        }
    }

    fn csv_flush_into_ndjson(&mut self, line: &[u8]) {
        self.buf.with(|b| {
            b.extend_from_slice(line);
            b.push(b'\n');
        });
    }

    /// Takes the bytes written so far (the header is written even for no rows).
    pub fn take(&mut self) -> Result<Bytes, String> {
        self.header()?;
        self.csv.flush().map_err(|e| e.to_string())?;
        Ok(Bytes::from(self.buf.with(std::mem::take)))
    }

    /// Bytes waiting to be taken.
    pub fn pending(&mut self) -> usize {
        let _ = self.csv.flush();
        self.buf.with(|b| b.len())
    }
}

/// Streams an export as chunks of about 64 KiB, then one empty chunk that marks the end: a
/// channel that closes without it was cut short. Dropping the receiver stops the query. With
/// `stall`, a reader that takes no chunk for that long ends the export (the query stops and
/// its read snapshot is released), so a stalled client cannot pin the database. `hold` is
/// kept until the export ends either way (a permit, say).
pub fn stream<H: Send + 'static>(
    store: &Store,
    filter: Filter,
    format: Format,
    stall: Option<std::time::Duration>,
    hold: H,
) -> mpsc::Receiver<Result<Bytes, StoreError>> {
    let (tx, rx) = mpsc::channel(2);
    let mut rows = store.export(filter, format.needs_raw());
    tokio::spawn(async move {
        let _hold = hold;
        let send = |chunk: Result<Bytes, StoreError>| {
            let tx = tx.clone();
            async move {
                match stall {
                    None => tx.send(chunk).await.is_ok(),
                    Some(limit) => match tokio::time::timeout(limit, tx.send(chunk)).await {
                        Ok(sent) => sent.is_ok(),
                        Err(_) => {
                            tracing::warn!(
                                stall_s = limit.as_secs_f64(),
                                "export client took nothing for too long; export stopped"
                            );
                            false
                        }
                    },
                }
            }
        };
        let mut enc = Encoder::new(format);
        while let Some(batch) = rows.recv().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    let _ = send(Err(e)).await;
                    return;
                }
            };
            for row in &batch {
                if let Err(e) = enc.push(row) {
                    let _ = send(Err(StoreError::Other(e))).await;
                    return;
                }
                // Hand over as soon as a chunk is full: buffering follows bytes, not rows.
                if enc.pending() >= 64 * 1024 {
                    let chunk = enc.take().map_err(StoreError::Other);
                    let failed = chunk.is_err();
                    if !send(chunk).await || failed {
                        return; // the client went away; dropping `rows` stops the query
                    }
                }
            }
        }
        match enc.take() {
            Ok(chunk) => {
                if !chunk.is_empty() && !send(Ok(chunk)).await {
                    return;
                }
                let _ = send(Ok(Bytes::new())).await;
            }
            Err(e) => {
                let _ = send(Err(StoreError::Other(e))).await;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(safe_cell("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(safe_cell("+1"), "'+1");
        assert_eq!(safe_cell("-2"), "'-2");
        assert_eq!(safe_cell("@cmd"), "'@cmd");
        assert_eq!(safe_cell("\tx"), "'\tx");
        assert_eq!(safe_cell("a=b"), "a=b");
    }

    #[test]
    fn columns_parse() {
        assert_eq!(
            Format::csv(Some("id, kind"), None),
            Ok(Format::Csv(vec![Column::Id, Column::Kind]))
        );
        assert!(Format::csv(Some("id,nope"), None)
            .unwrap_err()
            .contains("`columns`"));
        assert!(Format::csv(None, Some("excel"))
            .unwrap_err()
            .contains("`preset`"));
        assert_eq!(Format::csv(None, Some("ld-audit")), Ok(Format::LdAudit));
    }
}
