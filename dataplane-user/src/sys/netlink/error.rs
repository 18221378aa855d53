//! What a failed rtnetlink call was doing ([`Op`]) and the error that says
//! so ([`NetlinkError`]).

use std::{fmt, io, path::PathBuf};

/// What a failed call was doing; [`NetlinkError`] carries it so callers can
/// tell, say, a failed address removal from a failed link removal without
/// parsing text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    ListLinks,
    GetLink,
    CreateBridge,
    CreateVeth,
    CreateMacvlan,
    SetMaster,
    SetUp,
    SetDown,
    SetMtu,
    SetMac,
    Rename,
    MoveToNetns,
    DeleteLink,
    AddAddr,
    DelAddr,
    ListAddrs,
    ListRoutes,
    AddRoute,
    DelRoute,
    CreateVxlan,
    AddFdb,
    DelFdb,
    AddNeigh,
    DelNeigh,
    ListNeigh,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each reads as the verb of "cannot <op> <object>".
        f.write_str(match self {
            Op::ListLinks | Op::ListAddrs | Op::ListRoutes => "list",
            Op::GetLink => "look up",
            Op::CreateBridge => "create bridge",
            Op::CreateVeth => "create veth pair",
            Op::CreateMacvlan => "create macvlan",
            Op::SetMaster => "set the master of",
            Op::SetUp => "bring up",
            Op::SetDown => "bring down",
            Op::SetMtu => "set the MTU of",
            Op::SetMac => "set the MAC address of",
            Op::Rename => "rename",
            Op::MoveToNetns => "move",
            Op::DeleteLink => "delete",
            Op::AddAddr => "add address",
            Op::DelAddr => "delete address",
            Op::AddRoute => "add route",
            Op::DelRoute => "delete route",
            Op::CreateVxlan => "create vxlan",
            Op::AddFdb => "add",
            Op::DelFdb => "delete",
            Op::AddNeigh => "add",
            Op::DelNeigh => "delete",
            Op::ListNeigh => "list",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("Netlink::connect must run inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    #[error("cannot open network namespace {}", path.display())]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {}", path.display())]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a netlink socket in {netns}")]
    Socket {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the thread that opens a netlink socket in {netns}")]
    Thread {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("the thread opening a netlink socket in {netns} ended without a result")]
    ThreadLost { netns: String },
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid IPv4 prefix {value}: {reason}")]
    InvalidPrefix { value: String, reason: &'static str },
    /// The kernel refused the request; `errno` is positive (`libc::EEXIST`...).
    #[error("cannot {op} {object} in {netns}")]
    Kernel {
        op: Op,
        object: String,
        netns: String,
        errno: i32,
        #[source]
        source: io::Error,
    },
    /// The request never got a kernel verdict: the connection is gone or the
    /// reply was not what the request asks for.
    #[error("cannot {op} {object} in {netns}: netlink request failed")]
    Request {
        op: Op,
        object: String,
        netns: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The kernel accepted the request but its state does not show the result
    /// (e.g. a link created and gone before it could be read back).
    #[error("cannot {op} {object} in {netns}: {detail}")]
    Inconsistent {
        op: Op,
        object: String,
        netns: String,
        detail: &'static str,
    },
}

impl NetlinkError {
    /// The kernel's errno (positive) when the kernel refused the request or
    /// the namespace could not be opened or entered.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::OpenNetns { source, .. }
            | NetlinkError::EnterNetns { source, .. }
            | NetlinkError::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object does not exist: ENODEV (link), ENOENT (namespace path,
    /// some link kinds), ESRCH (route), and EADDRNOTAVAIL when deleting an
    /// address that is not there.
    pub fn is_not_found(&self) -> bool {
        match self {
            NetlinkError::Kernel { op, errno, .. } => {
                matches!(*errno, libc::ENODEV | libc::ENOENT | libc::ESRCH)
                    || (*op == Op::DelAddr && *errno == libc::EADDRNOTAVAIL)
            }
            NetlinkError::OpenNetns { source, .. } => source.raw_os_error() == Some(libc::ENOENT),
            _ => false,
        }
    }

    /// The object being created already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        matches!(self, NetlinkError::Kernel { errno, .. } if *errno == libc::EEXIST)
    }
}
