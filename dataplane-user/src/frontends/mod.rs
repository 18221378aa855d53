//! The front doors other than the CLI's API: Docker's remote network
//! driver ([`docker`]), the CNI plugin ([`cni`]), the DNS responder ([`dns`]) and the Prometheus
//! endpoint ([`metrics`]). Each parses its protocol into typed requests and
//! hands them to the control plane or the API; none holds state of its own.

pub mod cni;
pub mod dns;
pub mod docker;
pub mod metrics;
