"""Host-side networking: ``plan`` turns the resolved config into a ``NetworkPlan`` value
(TAPs, bridges, nftables rulesets as JSON data) and ``apply`` puts one on the kernel and takes
it off again. No other module touches netlink or nftables."""

from vmsilo.network.plan import Bridge, NetworkPlan, NftTable, TapDevice, plan_all, plan_vm

__all__ = ["Bridge", "NetworkPlan", "NftTable", "TapDevice", "plan_all", "plan_vm"]
