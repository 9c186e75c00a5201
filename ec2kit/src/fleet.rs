//! Fleet helpers: the same query over many regions, concurrently.

use futures::stream::{self, StreamExt};

use crate::iam::Permissions;
use crate::{Action, Ec2, Ec2Error, Filter, Instance, Region, RegionCatalog, Tag};

/// How many regions are queried at once by default: the 17 regions an
/// account has enabled by default, all at once. Each region is an endpoint
/// and a set of rate-limit buckets of its own, so regions in waves only
/// add their waits up (the many-accounts benchmark: 1.53× the slowest
/// account-region's time in waves of 8, 1.00× all at once).
pub const DEFAULT_REGION_CONCURRENCY: usize = 17;

/// The instance states a fleet query returns: everything but the dead.
pub const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// One region's answer: a failing region does not hide the others.
#[derive(Debug)]
pub struct RegionResult<T> {
    /// The region.
    pub region: Region,
    /// Its result.
    pub result: Result<T, Ec2Error>,
}

/// What [`region_catalog`] calls.
pub const REGION_CATALOG_PERMISSIONS: Permissions = Permissions::calls(&[Action::DescribeRegions]);

/// What [`instances_by_tag`] calls.
pub const INSTANCES_BY_TAG_PERMISSIONS: Permissions =
    Permissions::calls(&[Action::DescribeInstances]);

/// Loads the region catalog with one `DescribeRegions` call.
pub async fn region_catalog(ec2: &dyn Ec2) -> Result<RegionCatalog, Ec2Error> {
    Ok(RegionCatalog::new(ec2.describe_regions().await?))
}

/// Runs `f` for every region, at most `concurrency` at a time, and returns
/// the results in the order of `regions`.
pub async fn each_region<'a, T, F, Fut>(
    regions: &'a [Region],
    concurrency: usize,
    f: F,
) -> Vec<RegionResult<T>>
where
    F: Fn(&'a Region) -> Fut,
    Fut: Future<Output = Result<T, Ec2Error>> + 'a,
{
    in_order(regions, concurrency, |region| {
        let fut = f(region);
        async move {
            RegionResult {
                region: region.clone(),
                result: fut.await,
            }
        }
    })
    .await
}

/// `f` of every item, at most `concurrency` at a time (a slow item never
/// holds the others back), the outputs in the items' order.
pub(crate) async fn in_order<'a, I, T, F, Fut>(items: &'a [I], concurrency: usize, f: F) -> Vec<T>
where
    F: Fn(&'a I) -> Fut,
    Fut: Future<Output = T> + 'a,
{
    let mut results: Vec<(usize, T)> = stream::iter(items.iter().enumerate())
        .map(|(i, item)| {
            let fut = f(item);
            async move { (i, fut.await) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The live instances carrying `tag` in each region (one paginated,
/// server-side filtered `DescribeInstances` per region).
pub async fn instances_by_tag(
    ec2: &dyn Ec2,
    regions: &[Region],
    tag: &Tag,
    concurrency: usize,
) -> Vec<RegionResult<Vec<Instance>>> {
    let filters = [
        Filter::tag(tag),
        Filter::new("instance-state-name", LIVE_STATES.iter().copied()),
    ];
    each_region(regions, concurrency, |region| {
        ec2.describe_instances(region, &filters)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, InstanceId, MockEc2};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn instance(id: &str, region: &Region) -> Instance {
        Instance::new(InstanceId::from_api(id), region.clone())
    }

    #[tokio::test]
    async fn queries_every_region_with_tag_and_state_filters_and_isolates_failures() {
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_instances()
            .times(3)
            .withf(|_, filters| {
                filters.contains(&Filter::new("tag:Earmarking", ["production"]))
                    && filters.iter().any(|f| {
                        f.name == "instance-state-name"
                            && !f.values.contains(&"terminated".to_owned())
                    })
            })
            .returning(|region, _| match region.as_str() {
                "eu-west-1" => Err(Ec2Error::from_code(
                    Action::DescribeInstances,
                    "eu-west-1",
                    "UnauthorizedOperation",
                    None,
                )),
                r => Ok(vec![instance(&format!("i-{:08x}", r.len()), region)]),
            });
        let regions: Vec<Region> = ["us-east-1", "eu-west-1", "ap-south-1"]
            .map(Region::new)
            .to_vec();
        let out = instances_by_tag(&ec2, &regions, &Tag::new("Earmarking", "production"), 2).await;
        assert_eq!(
            out.iter().map(|r| r.region.as_str()).collect::<Vec<_>>(),
            ["us-east-1", "eu-west-1", "ap-south-1"]
        );
        assert_eq!(out[0].result.as_ref().unwrap().len(), 1);
        assert!(out[1].result.is_err());
        assert_eq!(out[2].result.as_ref().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_catalog_costs_one_describe_regions_for_any_number_of_lookups() {
        let mut ec2 = MockEc2::new();
        ec2.expect_describe_regions().times(1).returning(|| {
            Ok(["us-east-1", "us-west-1", "us-west-2", "eu-north-1"]
                .iter()
                .map(|n| crate::RegionInfo {
                    name: Region::new(*n),
                    endpoint: None,
                    opt_in_status: None,
                })
                .collect())
        });
        let catalog = region_catalog(&ec2).await.unwrap();
        for _ in 0..10 {
            assert_eq!(catalog.resolve("eu").unwrap().as_str(), "eu-north-1");
            assert!(catalog.resolve("us-west").is_err());
        }
        assert_eq!(catalog.resolve_all(&["all"]).unwrap().len(), 4);
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let regions: Vec<Region> = (0..10).map(|i| Region::new(format!("r-{i}"))).collect();
        let out = each_region(&regions, 3, |_| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await;
        assert_eq!(out.len(), 10);
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
