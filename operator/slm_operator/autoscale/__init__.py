"""Replica ownership and the operator's own autoscaler.

`handover`: the one-time hand-over of `spec.replicas` of a model Deployment when the operator stops
applying it (autoscaling switched on), so that server-side apply does not drop the field and the
Deployment does not fall to one pod. `decide`: the pure scaling decision on requests in flight
(including scale to zero). `demand`: the gateway's per-deployment demand, parsed. `loop`: the thin
I/O that reads the demand and writes the Deployments' scale subresource.
"""
