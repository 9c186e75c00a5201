//! `TargetGroups` on `AwsEc2` against moto's ELBv2.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2kit::{
    Action, AwsEc2, AwsEc2Options, ErrorKind, RateLimits, RequestHook, Target, TargetGroups,
    TargetState, TargetType,
};
use ektool_tests::{moto_target_group, moto_url};

async fn elb(record: Option<Arc<Mutex<Vec<Action>>>>) -> AwsEc2 {
    AwsEc2::new(AwsEc2Options {
        endpoint_url: Some(moto_url()),
        home_region: Some("us-east-1".into()),
        rate_limits: Some(RateLimits::disabled()),
        on_request: record.map(|r| RequestHook(Arc::new(move |a, _| r.lock().unwrap().push(a)))),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_target_group_is_described_drained_and_filled_again() {
    let group = moto_target_group(2, &[], 7);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let elb = elb(Some(calls.clone())).await;

    let tg = elb.describe_target_group(&group.arn).await.unwrap();
    assert_eq!(tg.arn, group.arn);
    assert_eq!(tg.target_type, TargetType::Instance);
    assert_eq!(tg.port, Some(80));
    assert_eq!(tg.deregistration_delay, Duration::from_secs(7));

    let mut health = elb.target_health(&group.arn, &[]).await.unwrap();
    health.sort_by(|a, b| a.target.id.cmp(&b.target.id));
    let mut ids: Vec<String> = group.instances.iter().map(|(i, _)| i.clone()).collect();
    ids.sort();
    assert_eq!(
        health
            .iter()
            .map(|h| h.target.id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    assert!(
        health.iter().all(|h| h.state == TargetState::Healthy),
        "{health:?}"
    );

    let first = Target::new(ids[0].clone());
    elb.deregister_targets(&group.arn, std::slice::from_ref(&first))
        .await
        .unwrap();
    let left = elb.target_health(&group.arn, &[]).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].target.id, ids[1]);
    let gone = elb
        .target_health(&group.arn, std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(gone[0].state, TargetState::NotRegistered, "{gone:?}");

    elb.register_targets(&group.arn, std::slice::from_ref(&first))
        .await
        .unwrap();
    let back = elb
        .target_health(&group.arn, std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(back[0].state, TargetState::Healthy, "{back:?}");

    // Every call went through the request hook (the IAM policy tests
    // record with it), under its ELB action.
    let calls = calls.lock().unwrap().clone();
    for a in [
        Action::DescribeTargetGroups,
        Action::DescribeTargetGroupAttributes,
        Action::DescribeTargetHealth,
        Action::DeregisterTargets,
        Action::RegisterTargets,
    ] {
        assert!(calls.contains(&a), "{a} not recorded: {calls:?}");
        assert_eq!(a.service(), "elasticloadbalancing");
    }
}

#[tokio::test]
async fn ip_targets_keep_their_ports() {
    let group = moto_target_group(0, &["10.20.1.7:8080".into(), "10.20.1.8:8081".into()], 0);
    let elb = elb(None).await;
    let tg = elb.describe_target_group(&group.arn).await.unwrap();
    assert_eq!(tg.target_type, TargetType::Ip);
    assert_eq!(tg.deregistration_delay, Duration::ZERO);
    let mut health = elb.target_health(&group.arn, &[]).await.unwrap();
    health.sort_by(|a, b| a.target.cmp(&b.target));
    assert_eq!(
        health
            .iter()
            .map(|h| h.target.to_string())
            .collect::<Vec<_>>(),
        ["10.20.1.7:8080", "10.20.1.8:8081"]
    );
}

#[tokio::test]
async fn an_unknown_target_group_is_not_found_and_a_bad_arn_is_refused() {
    let elb = elb(None).await;
    let missing =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/none/0123456789abcdef";
    let err = elb.describe_target_group(missing).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    let err = elb.target_health("web", &[]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest, "{err}");
}
