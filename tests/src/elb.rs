//! Target groups on the bench's moto, made with boto3 from the bench's
//! venv (moto depends on it): the toolkit itself never creates load
//! balancer resources, so its seam has no call for it.

use std::process::Command;

/// A target group made on moto: a VPC, a subnet, and the group, with its
/// targets registered.
#[derive(Debug, Clone)]
pub struct MotoTargetGroup {
    /// Its ARN.
    pub arn: String,
    /// The instances launched and registered (`instance` groups): their
    /// ids and private IPs, in launch order.
    pub instances: Vec<(String, String)>,
}

const SCRIPT: &str = r#"
import boto3, json, sys
url, region, kind, count, delay, name = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
given = sys.argv[7:]
ec2 = boto3.client("ec2", endpoint_url=url, region_name=region)
elb = boto3.client("elbv2", endpoint_url=url, region_name=region)
vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
arn = elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc, TargetType=kind)["TargetGroups"][0]["TargetGroupArn"]
elb.modify_target_group_attributes(TargetGroupArn=arn, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": delay}])
instances = []
if count:
    out = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=count, MaxCount=count, SubnetId=subnet)
    instances = [(i["InstanceId"], i["PrivateIpAddress"]) for i in out["Instances"]]
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": i} for i, _ in instances])
targets = []
for t in given:
    if t.startswith("i-"):
        targets.append({"Id": t})
    else:
        ip, port = t.rsplit(":", 1)
        targets.append({"Id": ip, "Port": int(port)})
if targets:
    elb.register_targets(TargetGroupArn=arn, Targets=targets)
print(json.dumps({"arn": arn, "instances": instances}))
"#;

/// Makes a target group in us-east-1 on moto: `instances` instances
/// launched and registered (an `instance` group), or the `ip_targets`
/// (`ip:port`) registered (an `ip` group); its deregistration delay set to
/// `delay_seconds`.
pub fn moto_target_group(
    instances: usize,
    ip_targets: &[String],
    delay_seconds: u32,
) -> MotoTargetGroup {
    let kind = if ip_targets.is_empty() {
        "instance"
    } else {
        "ip"
    };
    make("us-east-1", kind, instances, ip_targets, delay_seconds)
}

/// Makes an `instance` target group in `region` on moto with the existing
/// instances `ids` registered.
pub fn moto_instance_group(region: &str, ids: &[String], delay_seconds: u32) -> MotoTargetGroup {
    make(region, "instance", 0, ids, delay_seconds)
}

fn make(
    region: &str,
    kind: &str,
    instances: usize,
    targets: &[String],
    delay_seconds: u32,
) -> MotoTargetGroup {
    let python =
        std::path::Path::new(&crate::var("EKTOOL_TEST_MOTO_SERVER")).with_file_name("python");
    // Target group names: 32 characters at most.
    let name = crate::unique("tg");
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(crate::moto_url())
        .arg(region)
        .arg(kind)
        .arg(instances.to_string())
        .arg(delay_seconds.to_string())
        .arg(&name)
        .args(targets)
        .output()
        .expect("run the bench's python");
    assert!(
        out.status.success(),
        "making a target group on moto: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    MotoTargetGroup {
        arn: v["arn"].as_str().expect("arn").to_owned(),
        instances: v["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|p| {
                (
                    p[0].as_str().expect("id").to_owned(),
                    p[1].as_str().expect("ip").to_owned(),
                )
            })
            .collect(),
    }
}
