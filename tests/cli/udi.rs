//! `pentrace udi parse`, the label check used by clinic staff and our checks.

use std::process::{Command, Output};

use serde_json::Value;

fn pentrace(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args(args)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot run pentrace: {e}"),
    }
}

fn parsed(udi: &str) -> Value {
    let out = pentrace(&["udi", "parse", udi]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => panic!("not JSON ({e}): {stdout}"),
    }
}

fn rejected(udi: &str) -> String {
    let out = pentrace(&["udi", "parse", udi]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error: {stderr}"
    );
    stderr
}

const BRACKETED: &str = "(01)09506000134352(17)270200(10)A1B2(21)SN0001";

#[test]
fn bracketed_udi_prints_its_parts_with_day_00_resolved() {
    let v = parsed(BRACKETED);
    assert_eq!(v["gtin"], "09506000134352");
    assert_eq!(v["expiry"], "2027-02-28");
    assert_eq!(v["lot"], "A1B2");
    assert_eq!(v["serial"], "SN0001");
    assert!(
        v.get("production_date").is_none(),
        "absent fields are omitted: {v}"
    );
}

#[test]
fn raw_and_digital_link_forms_print_the_same_json() {
    let raw = "]d201095060001343521727020010A1B2\u{1d}21SN0001";
    let link = "https://id.example/01/09506000134352/10/A1B2/21/SN0001?17=270200";
    let expected = parsed(BRACKETED);
    assert_eq!(parsed(raw), expected);
    assert_eq!(parsed(link), expected);
}

#[test]
fn impossible_expiry_names_ai_17() {
    let err = rejected("(01)09506000134352(17)270231(10)A1B2(21)SN0001");
    assert!(err.contains("(17)"), "{err}");
}

#[test]
fn wrong_check_digit_names_ai_01() {
    let err = rejected("(01)09506000134353(17)270200(10)A1B2(21)SN0001");
    assert!(err.contains("(01)") && err.contains("check digit"), "{err}");
}

#[test]
fn garbage_is_a_clear_error_not_a_panic() {
    for input in ["", "hello", "(01)", "]d2", "https://id.example/", "(99)1"] {
        let err = rejected(input);
        assert!(!err.contains("panicked"), "{input:?}: {err}");
    }
}
