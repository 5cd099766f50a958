"""A plug-in component for test_gateway_components: records what `egs-gw run` hands it."""
import json

SEEN = {}


async def run(ctx):
    SEEN["ctx"] = ctx
    SEEN["closed"] = []
    ctx.hooks["interval_closed"].append(lambda rows: SEEN["closed"].extend(rows))
    await ctx.stopping.wait()
    # still connected while stopping: say goodbye through the gateway's MQTT session
    await ctx.hooks["publish"](f"egs/v1/{ctx.community}/probe/cmd", json.dumps({"cmd": "bye"}))
    SEEN["stopped"] = True


async def fail(ctx):
    raise RuntimeError("probe component broke")
