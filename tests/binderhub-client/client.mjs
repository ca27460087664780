// Runs BinderHub's own JavaScript client against a build endpoint and prints the phases it saw
// and the last event, as one JSON line. Usage: node client.mjs BUILD_ENDPOINT SPEC [build_only]
import { BinderRepository } from "@jupyterhub/binderhub-client/client.js";

// The client is written for browsers; these are the only globals it touches.
globalThis.window = globalThis;
globalThis.document = { cookie: "", hidden: false, addEventListener() {}, removeEventListener() {} };

const [endpoint, spec, mode] = process.argv.slice(2);
const repo = new BinderRepository(spec, new URL(endpoint), { buildOnly: mode === "build_only" });
const phases = [];
for await (const data of repo.fetch()) {
  phases.push(data.phase);
  if (data.phase === "ready" || data.phase === "failed") {
    console.log(JSON.stringify({ phases, last: data }));
    // Done: the client's own stream may still raise EventStreamClose as the server ends the
    // stream, which would end node with an uncaught error after the answer was printed.
    repo.close();
    process.exit(0);
  }
}
