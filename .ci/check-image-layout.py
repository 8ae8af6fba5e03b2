#!/usr/bin/env python3
"""deploy/Dockerfile's final stage and deploy/image/Containerfile must describe the same image:
both are FROM scratch over a root file system made by deploy/image/rootfs.sh, so the only line
allowed to differ is the COPY of that root file system."""
import sys

def final_stage(path):
    lines = [l.strip() for l in open(path) if l.strip() and not l.lstrip().startswith("#")]
    start = max(i for i, l in enumerate(lines) if l.startswith("FROM "))
    return [l for l in lines[start:] if not l.startswith("COPY ")]

docker, containerfile = final_stage("deploy/Dockerfile"), final_stage("deploy/image/Containerfile")
if docker != containerfile:
    sys.exit(f"image layouts differ:\n  Dockerfile:    {docker}\n  Containerfile: {containerfile}")
if "rootfs.sh" not in open("deploy/Dockerfile").read():
    sys.exit("deploy/Dockerfile does not lay out its root file system with deploy/image/rootfs.sh")
print("image layout: Dockerfile and Containerfile agree")
