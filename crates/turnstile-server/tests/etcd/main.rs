//! Tests of the etcd backend beyond the conformance suite (which runs against
//! it too): several sidecars over one real etcd, and failures of etcd and of
//! sidecars. Each test starts its own etcd on free loopback ports with a
//! temporary data dir; without an etcd binary they fail, saying how to get it
//! (`apt-get install -y etcd-server`).

mod common;
mod failures;
mod secure;
mod sidecars;
