//! One network's answers: a query that came in on a network's socket is
//! answered from that network's names only, and anything not a name of it
//! goes to the host's resolvers (never another network's address).

use std::{
    net::IpAddr,
    sync::{atomic::Ordering, Arc},
};

use hickory_proto::{
    op::{Header, MessageType, OpCode, ResponseCode},
    rr::{
        rdata::{A, AAAA, PTR},
        DNSClass, Name, RData, Record, RecordType,
    },
};
use hickory_resolver::error::ResolveErrorKind;
use hickory_server::{
    authority::MessageResponseBuilder,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
};
use tracing::debug;

use super::{Shared, COUNTERS};
use crate::control::names_dns::{reverse_v4, rotated, NetworkNames, DOMAIN};

/// Local answers are not cached by clients: an endpoint that goes, or an
/// alias that moves, is seen on the next query (as aardvark-dns does).
const LOCAL_TTL: u32 = 0;

/// The handler of one network's sockets.
pub(super) struct Handler {
    pub network: String,
    pub shared: Arc<Shared>,
}

/// What to send back: records in the answer and authority sections, and
/// the header's code.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
}

impl Reply {
    fn code(code: ResponseCode) -> Reply {
        Reply {
            code,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        COUNTERS.queries.fetch_add(1, Ordering::Relaxed);
        let reply =
            if request.op_code() != OpCode::Query || request.message_type() != MessageType::Query {
                Reply::code(ResponseCode::NotImp)
            } else {
                self.answer(request).await
            };
        if matches!(
            reply.code,
            ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp
        ) {
            COUNTERS.failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut header = Header::response_from_request(request.header());
        header.set_response_code(reply.code);
        header.set_authoritative(reply.authoritative);
        header.set_recursion_available(true);
        let message = MessageResponseBuilder::from_message_request(request).build(
            header,
            reply.answers.iter(),
            reply.authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                debug!(network = %self.network, "sending a DNS answer: {e}");
                COUNTERS.failures.fetch_add(1, Ordering::Relaxed);
                let mut h = Header::response_from_request(request.header());
                h.set_response_code(ResponseCode::ServFail);
                h.into()
            }
        }
    }
}

impl Handler {
    async fn answer(&self, request: &Request) -> Reply {
        let query = request.query();
        if query.query_class() != DNSClass::IN {
            return Reply::code(ResponseCode::Refused);
        }
        let name: Name = query.name().into();
        let qname = name.to_ascii();
        // The table of this moment; a network gone since the socket was
        // opened is a retryable failure, never another network's answer.
        let table = self.shared.table();
        let Some(names) = table.networks.get(&self.network) else {
            return Reply::code(ResponseCode::ServFail);
        };
        if let Some(entry) = names.get(&qname) {
            COUNTERS.answered.fetch_add(1, Ordering::Relaxed);
            let turn = self.shared.turn.fetch_add(1, Ordering::Relaxed);
            let answers = match query.query_type() {
                RecordType::A => rotated(entry, true, turn),
                RecordType::AAAA => rotated(entry, false, turn),
                _ => Vec::new(),
            };
            return Reply {
                code: ResponseCode::NoError,
                authoritative: true,
                answers: answers
                    .into_iter()
                    .map(|a| Record::from_rdata(name.clone(), LOCAL_TTL, rdata(a)))
                    .collect(),
                authority: Vec::new(),
            };
        }
        if let Some(reply) = reverse(names, &name, query.query_type()) {
            COUNTERS.answered.fetch_add(1, Ordering::Relaxed);
            return reply;
        }
        if NetworkNames::in_domain(&qname) {
            COUNTERS.answered.fetch_add(1, Ordering::Relaxed);
            return Reply {
                authoritative: true,
                ..Reply::code(ResponseCode::NXDomain)
            };
        }
        if names.internal {
            // Docker's internal networks resolve their names only.
            return Reply::code(ResponseCode::Refused);
        }
        self.forward(name, query.query_type()).await
    }

    async fn forward(&self, name: Name, rtype: RecordType) -> Reply {
        let Some(resolver) = self.shared.upstream() else {
            return Reply::code(ResponseCode::ServFail);
        };
        COUNTERS.forwarded.fetch_add(1, Ordering::Relaxed);
        match resolver.lookup(name, rtype).await {
            Ok(lookup) => Reply {
                code: ResponseCode::NoError,
                authoritative: false,
                answers: lookup.records().to_vec(),
                authority: Vec::new(),
            },
            Err(e) => match e.kind() {
                ResolveErrorKind::NoRecordsFound {
                    response_code, soa, ..
                } => Reply {
                    code: *response_code,
                    authoritative: false,
                    answers: Vec::new(),
                    authority: soa
                        .as_ref()
                        .map(|s| s.as_ref().clone().into_record_of_rdata())
                        .into_iter()
                        .collect(),
                },
                _ => {
                    debug!(network = %self.network, "forwarding: {e}");
                    Reply::code(ResponseCode::ServFail)
                }
            },
        }
    }
}

/// A PTR query for an endpoint address of this network: its name under our
/// domain. Other reverse names are forwarded like any name.
fn reverse(names: &NetworkNames, qname: &Name, rtype: RecordType) -> Option<Reply> {
    if rtype != RecordType::PTR {
        return None;
    }
    let addr = reverse_v4(&qname.to_ascii())?;
    let host = names.by_addr.get(&IpAddr::V4(addr))?;
    let target = Name::from_ascii(format!("{host}.{DOMAIN}.")).ok()?;
    Some(Reply {
        code: ResponseCode::NoError,
        authoritative: true,
        answers: vec![Record::from_rdata(
            qname.clone(),
            LOCAL_TTL,
            RData::PTR(PTR(target)),
        )],
        authority: Vec::new(),
    })
}

fn rdata(addr: IpAddr) -> RData {
    match addr {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    }
}
