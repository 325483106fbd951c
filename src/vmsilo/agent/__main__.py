"""``python3 -m vmsilo.agent``: how the guest's systemd unit starts the agent."""

from vmsilo.agent.main import main

raise SystemExit(main())
