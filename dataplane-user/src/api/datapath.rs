//! Requests on the datapath alone (`stats_attach`, `local_attach`,
//! `conntrack_gc`, `cleanup`, ...): they take no manager of the networks,
//! only the pins, so they run before one is opened.

use serde_json::Value;

use super::{
    check_iface,
    context::{answer, Context},
    types::{Cleaned, GcDone, LocalHooks, TcLink, TcLinks},
    Request,
};
use crate::{
    control::manager::Manager,
    datapath::{
        conntrack,
        ebpf::{detach_tc, Dataplane},
        host_local, stats,
    },
};

/// The answer, or the request back when it needs the manager.
pub(super) async fn execute(
    ctx: &Context,
    req: Request,
) -> Result<Result<Value, Request>, anyhow::Error> {
    let pins = &ctx.pins;
    let v = match req {
        Request::StatsAttach { iface, directions } => {
            check_iface(&iface)?;
            let mut dp = Dataplane::load(pins)?;
            let mut links = Vec::new();
            for dir in directions {
                let pin = stats::attach(&mut dp, &iface, dir.into())?;
                links.push(TcLink {
                    iface: iface.clone(),
                    direction: dir,
                    pin: Some(pin),
                });
            }
            answer(TcLinks { links })
        }
        Request::StatsDetach { iface, directions } => {
            let mut links = Vec::new();
            for dir in directions {
                detach_tc(pins, stats::PROGRAM, &iface, dir.into())?;
                links.push(TcLink {
                    iface: iface.clone(),
                    direction: dir,
                    pin: None,
                });
            }
            answer(TcLinks { links })
        }
        Request::LocalAttach { cgroup } => {
            let cgroup = cgroup.map_or_else(host_local::cgroup2_mount, Ok)?;
            let mut dp = Dataplane::load(pins)?;
            host_local::attach(&mut dp, pins, &cgroup)?;
            answer(LocalHooks { cgroup })
        }
        Request::LocalDetach { cgroup } => {
            let cgroup = cgroup.map_or_else(host_local::cgroup2_mount, Ok)?;
            host_local::detach(pins, &cgroup)?;
            answer(LocalHooks { cgroup })
        }
        Request::ConntrackGc { timeouts } => {
            // A blocking thread: a full table takes seconds to walk, and the
            // agent's runtime has one thread for every request.
            let (p, t) = (pins.clone(), timeouts.into());
            let r = tokio::task::spawn_blocking(move || conntrack::gc(&p, &t)).await??;
            answer(GcDone {
                scanned: r.scanned,
                removed: r.removed,
                unpaired: r.unpaired,
            })
        }
        Request::Cleanup => answer(cleanup(ctx).await),
        other => return Ok(Err(other)),
    };
    v.map(Ok)
}

/// Best effort: every step runs, every failure is reported. Never creates
/// a state to remove it ([`Manager::open_existing`]).
async fn cleanup(ctx: &Context) -> Cleaned {
    let mut errors = match Manager::open_existing(&ctx.state_dir, &ctx.pins).await {
        Ok(Some(mut m)) => {
            // Overlay endpoints give their records and addresses back.
            m.set_cluster(ctx.cluster.clone());
            m.teardown_all().await
        }
        Ok(None) => Vec::new(),
        Err(e) => vec![format!("{:#}", anyhow::Error::from(e))],
    };
    // Filters of endpoints no state knows of (a filter holds its program:
    // removing the pins does not detach it).
    errors.extend(crate::datapath::endpoints::remove_filters(&ctx.pins));
    errors.extend(
        ctx.pins
            .remove_all()
            .into_iter()
            .map(|e| format!("{:#}", anyhow::Error::from(e))),
    );
    Cleaned {
        bpffs_root: ctx.pins.path().to_owned(),
        errors,
    }
}
