"""Seed moto with the demo fleet: tagged instances in two regions."""
import sys

import boto3

url = sys.argv[1]


def ec2(region):
    return boto3.client(
        "ec2", region_name=region, endpoint_url=url,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


def launch(region, name, earmarking, count=1):
    tags = [{"Key": "Name", "Value": name}]
    if earmarking:
        tags.append({"Key": "Earmarking", "Value": earmarking})
    ec2(region).run_instances(
        ImageId="ami-0123456789abcdef0", InstanceType="t3.small", MinCount=count, MaxCount=count,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )


launch("us-east-1", "web", "production", 2)
launch("us-east-1", "db", "production")
launch("eu-west-1", "web-eu", "production")
launch("eu-west-1", "staging-web", "staging")
launch("us-east-1", "scratch", None)
print("seeded moto: 4 production, 1 staging, 1 untagged instance in us-east-1 and eu-west-1")
