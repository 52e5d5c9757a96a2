//! Bytes as a device would publish them: protobuf decode, the server's
//! boundary (`convert::device_message`), then the domain's rules with empty
//! facts and with facts that reach every cartridge rule. Nothing may panic.

#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use pentrace_domain::policy::Policy;
use pentrace_domain::rules::{self, Binding, Facts, LotFacts, ProductFacts};
use pentrace_proto::v1 as pb;
use pentrace_server::convert;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::DeviceMessage::decode(data) else {
        return;
    };
    let received_at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let Ok(msg) = convert::device_message(wire, received_at) else {
        return;
    };
    let ident = msg
        .session()
        .map(|c| rules::identify(&c.cartridge, received_at.date_naive()));
    let policy = Policy::default();
    rules::judge(
        &msg,
        ident.as_ref(),
        &Facts::default(),
        &policy,
        received_at,
    );
    let known = Facts {
        binding: msg.session().map(|c| Binding {
            session_id: format!("{}x", c.session_id),
            device_id: msg.device_id.clone(),
            clinic_id: String::new(),
            patient_ref: None,
            last_activity_at: c.started_at,
            strokes: 999,
            active_ms: 0,
        }),
        product: Some(ProductFacts {
            max_depth_um: 1500,
            rated_strokes: 1000,
            max_active_ms: 60_000,
            shelf_life_days: 0,
        }),
        lot: Some(LotFacts {
            expiry: None,
            recalled_at: Some(received_at),
        }),
        ..Facts::default()
    };
    let j = rules::judge(&msg, ident.as_ref(), &known, &policy, received_at);
    if !msg.time_faults.is_empty() {
        assert!(
            j.verdicts
                .iter()
                .any(|v| v.kind == pentrace_domain::FlagKind::ClockSkew)
        );
    }
});
