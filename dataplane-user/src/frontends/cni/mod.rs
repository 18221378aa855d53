//! The CNI plugin (`dataplane-cni`, spec 1.0.0, also 0.3.x/0.4.0 and
//! 1.1.0's GC and STATUS): a container runtime's request (environment
//! variables and a network configuration on stdin) parsed once into typed
//! values ([`config`]), handed to the agent over its API socket, and the
//! agent's answer turned into a spec result ([`result`]) or the spec's error
//! JSON ([`CniError`]). The work itself (veth, address, route, published
//! ports) is the agent's, through the same manager as `dataplane connect`
//! (`network/manager/cni.rs`); [`plugin::run`] is the one dispatcher.
//! `CNI_PATH` is not read: nothing is delegated to other plugins (the IPAM
//! is the agent's).
//!
//! There is no in-process fallback: without an agent the plugin answers
//! code 11 (try again later). A plugin runs in the runtime's context (its
//! environment, a short-lived process per call) and would otherwise load
//! the eBPF object and write the state with settings of its own, beside an
//! agent that may be starting; the agent is the one writer.

pub mod config;
mod env;
pub mod plugin;
pub mod result;

use serde::Serialize;

/// The requests the plugin sends the agent are the control plane's own.
pub use crate::control::cni::{AddArgs, AddResult, AttachmentKey, CheckArgs, GcArgs, NetworkSpec};

/// The versions this plugin speaks, oldest first (VERSION lists them).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Used for answers when the request names no (usable) version.
pub const DEFAULT_VERSION: &str = "1.0.0";
/// The `ipam.type` values that mean "the dataplane's own IPAM".
pub const IPAM_TYPES: [&str; 2] = ["dataplane", "dataplane-cni"];

/// The spec's well-known error codes, and ours (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS (1.1.0): the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent refused the request; `details` carries its error.
    pub const AGENT_REFUSED: u32 = 100;
    /// CHECK: the live interface, address, route or published ports differ
    /// from what ADD set up; `details` lists each difference.
    pub const CHECK_FAILED: u32 = 101;
    /// The agent's socket could not be used, or its answer not understood.
    pub const AGENT_UNREACHABLE: u32 = 102;
}

/// An error as the spec prints it on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// `{"cniVersion", "code", "msg", "details"}`.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorJson<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let json = ErrorJson {
            cni_version: version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        // Strings and a number: serialising cannot fail.
        serde_json::to_value(json).unwrap_or_default()
    }
}
