//! `pentrace demo` on the embedded defaults (SQLite, the in-process broker):
//! no PostgreSQL or Mosquitto involved.

use std::process::Command;

#[test]
fn the_demo_checks_out_on_the_embedded_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_pentrace"))
        .args(["demo", "--pens", "8", "--seed", "7"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run pentrace demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("store=sqlite:") && stdout.contains("mqtt=embedded:"),
        "{stdout}"
    );
    assert!(stdout.contains("demo: everything checked out"), "{stdout}");
    assert_eq!(
        stdout.matches("verify: PASSED").count(),
        2,
        "MQTT and gRPC both verified:\n{stdout}"
    );
    let report = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sterility report (clinic demo-mqtt): "))
        .expect("report path");
    let html = std::fs::read_to_string(report).expect("the report exists after the demo");
    assert!(html.contains("<html") && !html.contains("<script"));
    let _ = std::fs::remove_file(report);
}
