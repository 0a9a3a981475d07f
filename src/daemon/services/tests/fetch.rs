//! Fetch.

use super::*;

#[test]
fn fetch_of_a_megabyte_is_byte_exact_from_an_ephemeral_port() {
    let mut t = trio(50, ServicesConfig::default());
    // The origin runs the built-in HTTP service too.
    let mut origin_svc = http_origin(&mut t);
    let url = Url::parse("http://origin.test:8080/bytes/1000000").unwrap();
    let resolve = |name: &str, port: u16| -> io::Result<Vec<SocketAddr>> {
        assert_eq!(name, "origin.test");
        Ok(vec![SocketAddr::new(ip(ORIGIN), port)])
    };
    t.svc.set_resolver(Box::new(InlineResolver::new(resolve)));
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    let mut events = Vec::new();
    let mut body = Vec::new();
    let svc = &mut t.svc;
    t.net
        .run_until(STEPS, |n| {
            let now = n.now();
            origin_svc.handle_events(n.stack(2), now);
            svc.handle_events(n.stack(1), now);
            drain_fetch(svc, id, &mut events, &mut body);
            matches!(
                events.last(),
                Some(FetchEvent::Done | FetchEvent::Failed(_))
            )
        })
        .unwrap();
    let [FetchEvent::Connected { local, remote }, FetchEvent::Head { status: 200 }, FetchEvent::Done] =
        events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert!(in_ephemeral_range(*local), "{local}");
    assert_eq!(*remote, sa("10.0.0.3:8080"));
    assert_eq!(body.len(), 1_000_000);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64)));
    assert_eq!(t.svc.poll_fetch(id), None, "the id is forgotten after Done");
}

#[test]
fn fetch_from_a_closed_port_fails_with_refused() {
    let mut t = trio(51, ServicesConfig::default());
    let url = Url::parse("http://10.0.0.3:8081/").unwrap();
    // A literal is never looked up.
    t.svc.set_resolver(Box::new(InlineResolver::new(
        |_: &str, _: u16| unreachable!(),
    )));
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    let mut events = Vec::new();
    t.run(|_, svc| {
        while let Some(ev) = svc.poll_fetch(id) {
            events.push(ev);
        }
        !events.is_empty()
    });
    match events.as_slice() {
        [FetchEvent::Failed(why)] => assert!(why.contains("refused"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fetch_of_a_denied_destination_is_refused() {
    let mut t = trio(52, ServicesConfig::default());
    t.svc
        .set_resolver(Box::new(InlineResolver::new(|_: &str, p: u16| {
            Ok(vec![SocketAddr::new(ip("169.254.169.254"), p)])
        })));
    let url = Url::parse("http://169.254.169.254/latest/meta-data/").unwrap();
    let e = t.svc.start_fetch(t.net.stack(1), &url).unwrap_err();
    assert!(
        matches!(e, FetchError::Denied(_)) && e.to_string().contains("169.254.0.0/16"),
        "{e}"
    );
    let url = Url::parse("http://metadata.test/").unwrap();
    let id = t.svc.start_fetch(t.net.stack(1), &url).unwrap();
    let mut events = Vec::new();
    let mut body = Vec::new();
    t.run(|_, svc| {
        drain_fetch(svc, id, &mut events, &mut body);
        !events.is_empty()
    });
    match events.as_slice() {
        [FetchEvent::Failed(why)] => {
            assert!(why.contains("not allowed as a destination"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.svc.counters().fetch_denied_destination, 2);
    assert_eq!(t.net.stack(1).counters().tcp_active_opens, 0);
}
