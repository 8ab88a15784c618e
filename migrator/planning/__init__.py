"""Planning: a pure planner (inventory + policy -> Plan) and plan files people review."""
