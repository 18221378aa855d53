//! One CNI invocation: environment and stdin in, the stdout text and
//! whether it succeeded out. Everything that can be checked without the
//! agent is checked first, so a bad request never reaches it and changes
//! nothing.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    code,
    config::{parse_env, peek_version, version_has, Command, NetConf},
    result, AddArgs, AddResult, AttachmentKey, CheckArgs, CniError, GcArgs, DEFAULT_VERSION,
    SUPPORTED_VERSIONS,
};
use crate::api::{self, ApiError, Request};

/// What the binary prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// A result, a VERSION answer, an error JSON, or nothing (DEL, CHECK,
    /// GC and STATUS print nothing on success).
    pub stdout: String,
    pub success: bool,
}

/// Runs one CNI command; `var` reads the environment.
pub async fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    match dispatch(&var, stdin).await {
        Ok(Some(v)) => Outcome {
            stdout: v.to_string(),
            success: true,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            success: true,
        },
        Err(e) => {
            let version = peek_version(stdin).unwrap_or_else(|| DEFAULT_VERSION.to_owned());
            Outcome {
                stdout: e.to_json(&version).to_string(),
                success: false,
            }
        }
    }
}

async fn dispatch(
    var: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let env = parse_env(var)?;
    if env.command == Command::Version {
        // The request's version when we speak it (libcni asks with its own).
        let version = peek_version(stdin).unwrap_or_else(|| DEFAULT_VERSION.to_owned());
        let answer = VersionAnswer {
            cni_version: version,
            supported_versions: &SUPPORTED_VERSIONS,
        };
        return Ok(Some(serde_json::to_value(answer).unwrap_or_default()));
    }
    let mut conf = NetConf::parse(stdin, api::DEFAULT_SOCKET)?;
    if let Some(e) = conf.ipam_error.take() {
        // What cleans up still runs on a configuration ADD would refuse.
        if !matches!(env.command, Command::Del | Command::Gc) {
            return Err(e);
        }
    }
    if !version_has(&conf.cni_version, env.command) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} does not exist in cniVersion {}",
                env.command.name(),
                conf.cni_version
            ),
        ));
    }
    let command = env.command.name();
    match (env.command, env.key) {
        (Command::Add, Some(key)) => {
            let names = conf.aliases.iter().cloned().chain(env.pod_name).collect();
            add(&conf, key, env.netns, env.ip, names).await.map(Some)
        }
        (Command::Del, Some(key)) => {
            call(
                &conf,
                command,
                Request::CniDel {
                    network: conf.network.clone(),
                    key,
                },
            )
            .await?;
            Ok(None)
        }
        (Command::Check, Some(key)) => check(&conf, key, env.netns).await.map(|()| None),
        (Command::Gc, _) => {
            let valid = conf.valid_attachments.clone().ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "cni.dev/valid-attachments: GC needs the list of attachments to keep",
                )
            })?;
            let args = GcArgs {
                network: conf.network.clone(),
                valid,
            };
            call(&conf, command, Request::CniGc { args }).await?;
            Ok(None)
        }
        (Command::Status, _) => match api::call(&conf.socket, &Request::Status).await {
            Ok(Some(_)) => Ok(None),
            Ok(None) | Err(_) => Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("no dataplane agent answers on {}", conf.socket.display()),
            )),
        },
        (Command::Version, _) => Ok(None),
        // parse_env gives every ADD/DEL/CHECK a key.
        (Command::Add | Command::Del | Command::Check, None) => Err(CniError::new(
            code::INVALID_ENV,
            format!("{command}: CNI_CONTAINERID and CNI_IFNAME are required"),
        )),
    }
}

/// One API call; the errors as CNI codes: no agent is 11 (the runtime may
/// retry once the agent is back), a refusal is 100 with the agent's words.
/// VERSION's answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionAnswer {
    cni_version: String,
    supported_versions: &'static [&'static str],
}

/// ADD: the agent attaches, the result is the spec's.
async fn add(
    conf: &NetConf,
    key: AttachmentKey,
    netns: Option<String>,
    env_ip: Option<Ipv4Addr>,
    aliases: Vec<String>,
) -> Result<Value, CniError> {
    let ip = match (conf.ip, env_ip) {
        (Some(a), Some(b)) if a != b => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("runtimeConfig.ips {a} and CNI_ARGS IP={b} disagree"),
            ))
        }
        (a, b) => a.or(b),
    };
    let args = AddArgs {
        network: conf.network.clone(),
        create: conf.create.clone(),
        key,
        netns: netns.unwrap_or_default(),
        ip: ip.map(|i| i.to_string()),
        ip6: conf.ip6.map(|i| i.to_string()),
        mac: conf.mac.clone(),
        publish: conf.publish.clone(),
        aliases,
    };
    let v = call(
        conf,
        "ADD",
        Request::CniAdd {
            args: Box::new(args),
        },
    )
    .await?;
    let added: AddResult = serde_json::from_value(v).map_err(|e| {
        CniError::new(
            code::AGENT_UNREACHABLE,
            "the agent's ADD answer is malformed",
        )
        .with_details(e.to_string())
    })?;
    Ok(result::add_result(
        &conf.cni_version,
        conf.prev_result.as_ref(),
        conf.dns.as_ref(),
        &added,
    ))
}

/// The agent's answer to `cni_check`.
#[derive(Deserialize)]
struct CheckAnswer {
    problems: Vec<String>,
}

/// CHECK: the agent compares what ADD reported with what is live.
async fn check(conf: &NetConf, key: AttachmentKey, netns: Option<String>) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "prevResult: CHECK needs the result of the ADD it checks",
        )
    })?;
    let reported = result::reported(prev, &key.ifname)?;
    let args = CheckArgs {
        network: conf.network.clone(),
        key,
        netns: netns.unwrap_or_default(),
        address: reported.address,
        routes: reported.routes,
        publish: conf.publish.clone(),
    };
    let v = call(conf, "CHECK", Request::CniCheck { args }).await?;
    // A malformed answer must not pass for "no problems".
    let answer: CheckAnswer = serde_json::from_value(v).map_err(|e| {
        CniError::new(
            code::AGENT_UNREACHABLE,
            "the agent's CHECK answer is malformed",
        )
        .with_details(e.to_string())
    })?;
    if answer.problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "CHECK: the attachment on network {} differs from what ADD set up",
                conf.network
            ),
        )
        .with_details(answer.problems.join("; ")))
    }
}

async fn call(conf: &NetConf, command: &str, req: Request) -> Result<Value, CniError> {
    match api::call(&conf.socket, &req).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "no dataplane agent answers on {} (start it: systemctl start dataplane)",
                conf.socket.display()
            ),
        )),
        Err(ApiError::Failed(msg)) => Err(CniError::new(
            code::AGENT_REFUSED,
            format!("the dataplane agent refused {command}"),
        )
        .with_details(msg)),
        Err(e) => Err(CniError::new(
            code::AGENT_UNREACHABLE,
            format!("talking to the dataplane agent for {command}"),
        )
        .with_details(format!("{:#}", anyhow::Error::from(e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(pairs: &[(&str, &str)], stdin: &str) -> (Outcome, Value) {
        let vars: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(run(|k| vars.get(k).cloned(), stdin.as_bytes()));
        let v = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        (out, v)
    }

    #[test]
    fn version_lists_what_we_speak() {
        let (out, v) = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert!(out.success);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(SUPPORTED_VERSIONS)
        );
    }

    #[test]
    fn errors_are_the_specs_json_on_stdout() {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/none"),
            ("CNI_IFNAME", "eth0"),
        ];
        let (out, v) = run_with(&env, "{oops");
        assert!(!out.success);
        assert_eq!(v["code"], 6);
        assert_eq!(v["cniVersion"], DEFAULT_VERSION);
        assert!(v["msg"].as_str().unwrap().contains("not valid JSON"));
        assert!(v["details"].is_string());
        // CHECK does not exist in 0.3.1: code 1, answered in that version.
        let mut check = env;
        check[0] = ("CNI_COMMAND", "CHECK");
        let (_, v) = run_with(&check, r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#);
        assert_eq!(
            (v["code"].as_u64(), v["cniVersion"].as_str()),
            (Some(1), Some("0.3.1"))
        );
        // No agent on the socket: try again later.
        let (out, v) = run_with(
            &env,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","socket":"/nonexistent/dp.sock"}"#,
        );
        assert!(!out.success);
        assert_eq!(v["code"], 11, "{v}");
        // CHECK without prevResult.
        let (_, v) = run_with(
            &check,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","socket":"/nonexistent/dp.sock"}"#,
        );
        assert_eq!(v["code"], 7, "{v}");
    }
}
