// A Motoko agent tested the way canister developers test with PocketIC (@dfinity/pic), against the
// emulator's PocketIC door: the LLM canister is inside every instance, scripted over /icllm/.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { IDL } from '@icp-sdk/core/candid';
import { Principal } from '@icp-sdk/core/principal';
import { PocketIc, PocketIcServer, type Actor } from '@dfinity/pic';

const WASM = process.env.ICLLM_MOTOKO_WASM;
const LARGE_WASM = process.env.ICLLM_AZLE_WASM;
if (!WASM || !LARGE_WASM) {
  throw new Error('set ICLLM_MOTOKO_WASM and ICLLM_AZLE_WASM to the test canisters (tests/processes does)');
}

// The agent's interface, as `didc bind --target js` would write it for the methods these tests call.
const idlFactory: IDL.InterfaceFactory = ({ IDL }) =>
  IDL.Service({
    prompt: IDL.Func([IDL.Text], [IDL.Text], []),
    asked_count: IDL.Func([], [IDL.Nat], ['query']),
    remind_in: IDL.Func([IDL.Nat, IDL.Text], [], []),
    timer_answer: IDL.Func([], [IDL.Opt(IDL.Text)], ['query']),
    fetch_url: IDL.Func([IDL.Text, IDL.Nat], [IDL.Text], []),
  });
interface Agent {
  prompt: (text: string) => Promise<string>;
  asked_count: () => Promise<bigint>;
  remind_in: (seconds: bigint, text: string) => Promise<undefined>;
  timer_answer: () => Promise<[] | [string]>;
  fetch_url: (url: string, cycles: bigint) => Promise<string>;
}
type Deferred<T> = { [K in keyof T]: T[K] extends (...a: infer A) => Promise<infer R> ? (...a: A) => Promise<() => Promise<R>> : never };

let server: PocketIcServer;
let pic: PocketIc;
let agent: Actor<Agent>;
let canisterId: Principal;
let icllm: string; // this instance's LLM canister control plane

async function control(path: string, body?: unknown): Promise<any> {
  const response = await fetch(`${icllm}/${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${path}: ${json.message}`);
  return json;
}

const reply = (contains: string, content: string) => ({
  rules: [{ match: { contains }, action: { reply: { content } } }],
});

beforeAll(async () => {
  server = await PocketIcServer.start();
});

afterAll(async () => {
  await server.stop();
});

beforeEach(async () => {
  pic = await PocketIc.create(server.getUrl());
  const fixture = await pic.setupCanister<Agent>({ idlFactory, wasm: readFileSync(WASM) });
  agent = fixture.actor;
  canisterId = fixture.canisterId;
  const [subnet] = await pic.getApplicationSubnets();
  icllm = `${server.getUrl()}/subnets/${subnet.id.toText()}/icllm`;
});

afterEach(async () => {
  await pic.tearDown();
});

describe('a Motoko agent with the LLM canister inside PocketIC', () => {
  it('answers with the scripted reply, and the LLM canister saw its prompt', async () => {
    await control('rules', reply('capital of France', 'Paris.'));
    expect(await agent.prompt('What is the capital of France?')).toBe('Paris.');
    const history = await control('history');
    expect(history.calls).toHaveLength(1);
    expect(history.calls[0].caller).toBe(canisterId.toText());
    expect(JSON.stringify(history.calls[0].request)).toContain('capital of France');
  });

  it('keeps its state across an upgrade', async () => {
    await agent.prompt('one');
    await pic.upgradeCanister({
      canisterId,
      wasm: readFileSync(WASM),
      upgradeModeOptions: { skip_pre_upgrade: [], wasm_memory_persistence: [{ keep: null }] },
    });
    expect(await agent.asked_count()).toBe(1n);
    const status = await pic.canisterStatus({ canisterId });
    expect(status.moduleHash).not.toBeNull();
  });

  it('is refused while stopped, and answers again once started', async () => {
    await pic.stopCanister({ canisterId });
    await expect(agent.prompt('hello')).rejects.toThrow(/CanisterStopped/);
    await pic.startCanister({ canisterId });
    await control('rules', reply('hello', 'hi'));
    expect(await agent.prompt('hello')).toBe('hi');
  });

  it('runs its timer once time is advanced and a round ticks', async () => {
    await control('rules', reply('remind me', 'reminded'));
    await agent.remind_in(60n, 'remind me');
    await pic.advanceTime(59_000);
    await pic.tick();
    expect(await agent.timer_answer()).toEqual([]);
    await pic.advanceTime(2_000);
    await pic.tick(2);
    expect(await agent.timer_answer()).toEqual(['reminded']);
  });

  it('makes an HTTP outcall that the test answers', async () => {
    const deferred = pic.createDeferredActor<Agent>(idlFactory, canisterId) as unknown as Deferred<Agent>;
    const result = await deferred.fetch_url('https://api.example.com/price?symbol=ICP', 1_000_000_000n);
    await pic.tick();
    const [outcall] = await pic.getPendingHttpsOutcalls();
    expect(outcall.url).toBe('https://api.example.com/price?symbol=ICP');
    await pic.mockPendingHttpsOutcall({
      requestId: outcall.requestId,
      subnetId: outcall.subnetId,
      response: { type: 'success', statusCode: 200, headers: [], body: new TextEncoder().encode('{"usd": 9}') },
    });
    expect(await result()).toBe('HTTP 200: {"usd": 9}');
  });

  it('waits on a held answer until the test releases it', async () => {
    await control('rules', reply('slow', 'at last'));
    await control('hold', { hold: true });
    const deferred = pic.createDeferredActor<Agent>(idlFactory, canisterId) as unknown as Deferred<Agent>;
    const answer = await deferred.prompt('a slow question');
    let jobs: any[] = [];
    for (let i = 0; i < 100 && !jobs.some(j => j.state === 'HELD'); i++) {
      await pic.tick();
      jobs = (await control('jobs')).jobs ?? [];
    }
    expect(jobs.map(j => j.state)).toEqual(['HELD']);
    expect((await control('release', { all: true })).job_ids).toHaveLength(1);
    expect(await answer()).toBe('at last');
  });

  it('shows a reject with its reject code and error code', async () => {
    await control('rules', { rules: [{ match: {}, action: { reject: { code: 2, message: 'queue full' } } }] });
    await expect(agent.prompt('x')).rejects.toThrow(
      'Canister call failed: queue full. Reject code: CanisterReject. Error code: CanisterRejectedMessage.',
    );
    await expect(pic.updateCall({ canisterId, method: 'no_such_method' })).rejects.toThrow(
      /has no update or query method 'no_such_method'.*Reject code: DestinationInvalid. Error code: CanisterMethodNotFound/,
    );
  });

  it('installs a module over 2 MB from chunks uploaded in parallel', async () => {
    const wasm = readFileSync(LARGE_WASM);
    expect(wasm.byteLength).toBeGreaterThan(2_000_000);
    const large = await pic.createCanister();
    await pic.installCode({ canisterId: large, wasm });
    const status = await pic.canisterStatus({ canisterId: large });
    const hash = createHash('sha256').update(wasm).digest('hex');
    expect(Buffer.from(status.moduleHash as Uint8Array).toString('hex')).toBe(hash);
    expect(await pic.getControllers(large)).toEqual([Principal.anonymous()]);
  });
});
