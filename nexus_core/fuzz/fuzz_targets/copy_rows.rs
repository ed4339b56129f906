//! Any bytes as a COPY payload or tuple: the error-path helpers return errors, never panic, and
//! what they accept round-trips. The first byte picks the column types for the last resort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_core::pgcopy::{
    copy_payload, copy_row_field, copy_row_fields, copy_row_last_resort, copy_rows, ColumnType,
};

const LAYOUTS: &[&[&str]] = &[
    &["jsonb"],
    &["text"],
    &["jsonb", "raw", "text", "raw", "repairs"],
    &["uuid", "json", "raw", "int4", "repairs"],
    &["repairs"],
    &["text[]", "bytea", "jsonb", "raw"],
];

fn last_resort(types: &[ColumnType], row: &[u8]) {
    if let Ok(out) = copy_row_last_resort(types, row) {
        let fields = copy_row_fields(&out).expect("last resort writes a well-formed tuple");
        assert_eq!(fields.len(), types.len());
        // And the result is itself acceptable input.
        copy_row_last_resort(types, &out).expect("a last-resort row is valid input");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let types = ColumnType::parse_all(LAYOUTS[usize::from(pick) % LAYOUTS.len()]).unwrap();
    // As a whole payload.
    if let Ok(rows) = copy_rows(rest) {
        assert_eq!(copy_payload(rows.iter().copied()), rest);
        for row in rows {
            last_resort(&types, row);
        }
    }
    // As one tuple, and as a tuple inside a payload.
    last_resort(&types, rest);
    let _ = copy_row_field(rest, usize::from(pick) % 8);
    if copy_row_fields(rest).is_ok() {
        let payload = copy_payload([rest]);
        assert_eq!(
            copy_rows(&payload).expect("a valid tuple splits back"),
            [rest]
        );
    }
});
