//! [`TargetGroups`] on aws-sdk-elasticloadbalancingv2, through [`AwsEc2`]
//! (feature `aws`): the same configuration, pacing, retries and request
//! hook as its EC2 calls.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types as sdk;

use crate::aws::map_err;
use crate::elb::{DEFAULT_DEREGISTRATION_DELAY, region_of};
use crate::{
    Action, AwsEc2, Ec2Error, ErrorKind, Target, TargetGroup, TargetGroups, TargetHealth,
    TargetState, TargetType,
};

/// The attribute holding how long a deregistered target drains.
const DEREGISTRATION_DELAY: &str = "deregistration_delay.timeout_seconds";

fn descriptions(targets: &[Target]) -> Option<Vec<sdk::TargetDescription>> {
    (!targets.is_empty()).then(|| {
        targets
            .iter()
            .map(|t| {
                sdk::TargetDescription::builder()
                    .id(&t.id)
                    .set_port(t.port.map(i32::from))
                    .build()
            })
            .collect()
    })
}

fn port(p: Option<i32>) -> Option<u16> {
    p.and_then(|p| u16::try_from(p).ok())
}

#[async_trait]
impl TargetGroups for AwsEc2 {
    async fn describe_target_group(&self, arn: &str) -> Result<TargetGroup, Ec2Error> {
        let action = Action::DescribeTargetGroups;
        let region = region_of(arn).map_err(|e| e.into_error(action))?;
        let out = self
            .elb_ready(action, &region)
            .await?
            .describe_target_groups()
            .target_group_arns(arn)
            .send()
            .await
            .map_err(|e| map_err(action, &region, e))?;
        let group = out.target_groups().first().ok_or_else(|| {
            Ec2Error::new(
                action,
                region.as_str(),
                ErrorKind::NotFound,
                format!("no target group {arn}"),
            )
        })?;
        let action = Action::DescribeTargetGroupAttributes;
        let attributes = self
            .elb_ready(action, &region)
            .await?
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|e| map_err(action, &region, e))?;
        let delay = attributes
            .attributes()
            .iter()
            .find(|a| a.key() == Some(DEREGISTRATION_DELAY))
            .and_then(|a| a.value())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_DEREGISTRATION_DELAY, Duration::from_secs);
        Ok(TargetGroup {
            arn: group.target_group_arn().unwrap_or(arn).to_owned(),
            name: group.target_group_name().unwrap_or_default().to_owned(),
            target_type: group
                .target_type()
                .map_or(TargetType::Instance, |t| TargetType::from_api(t.as_str())),
            port: port(group.port()),
            deregistration_delay: delay,
        })
    }

    async fn target_health(
        &self,
        arn: &str,
        targets: &[Target],
    ) -> Result<Vec<TargetHealth>, Ec2Error> {
        let action = Action::DescribeTargetHealth;
        let region = region_of(arn).map_err(|e| e.into_error(action))?;
        // One answer: the API does not paginate this call.
        let out = self
            .elb_ready(action, &region)
            .await?
            .describe_target_health()
            .target_group_arn(arn)
            .set_targets(descriptions(targets))
            .send()
            .await
            .map_err(|e| map_err(action, &region, e))?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let t = d.target()?;
                let health = d.target_health();
                let reason = health
                    .and_then(|h| h.reason())
                    .map(|r| r.as_str().to_owned());
                let state = match health.and_then(|h| h.state()) {
                    _ if reason.as_deref() == Some("Target.NotRegistered") => {
                        TargetState::NotRegistered
                    }
                    Some(s) => TargetState::from_api(s.as_str()),
                    None => TargetState::Other,
                };
                Some(TargetHealth {
                    target: Target {
                        id: t.id()?.to_owned(),
                        port: port(t.port()),
                    },
                    state,
                    reason,
                })
            })
            .collect())
    }

    async fn register_targets(&self, arn: &str, targets: &[Target]) -> Result<(), Ec2Error> {
        let action = Action::RegisterTargets;
        let region = region_of(arn).map_err(|e| e.into_error(action))?;
        if targets.is_empty() {
            return Ok(());
        }
        self.elb_ready(action, &region)
            .await?
            .register_targets()
            .target_group_arn(arn)
            .set_targets(descriptions(targets))
            .send()
            .await
            .map_err(|e| map_err(action, &region, e))?;
        Ok(())
    }

    async fn deregister_targets(&self, arn: &str, targets: &[Target]) -> Result<(), Ec2Error> {
        let action = Action::DeregisterTargets;
        let region = region_of(arn).map_err(|e| e.into_error(action))?;
        if targets.is_empty() {
            return Ok(());
        }
        self.elb_ready(action, &region)
            .await?
            .deregister_targets()
            .target_group_arn(arn)
            .set_targets(descriptions(targets))
            .send()
            .await
            .map_err(|e| map_err(action, &region, e))?;
        Ok(())
    }
}
