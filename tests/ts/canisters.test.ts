// A test harness in TypeScript, as a canister developer using pic-js or vitest would write one: it starts
// the emulator process, installs a test canister over the Canisters gRPC service, scripts the LLM's
// answer over Control, and encodes and decodes Candid with DFINITY's own @dfinity/candid.
//
// Run by tests/test_typescript_harness.py (make test) with ICLLM_PYTHON (the emulator's interpreter),
// ICLLM_AGENT_WASM (the Rust test agent) and ICLLM_MOTOKO_WASM (the Motoko agent) set.
import { IDL } from '@dfinity/candid';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

const ROOT = resolve(import.meta.dirname, '..', '..');
const PROTOS = ['canisters.proto', 'control.proto', 'canister.proto'].map((f) => join('icllm', 'v1', f));

type Client = grpc.Client & Record<string, Function>;
let emulator: ChildProcess;
let canisters: Client;
let control: Client;

// The emulator is started with a control token, as one reachable from other machines must be: every
// Control and Canisters call carries it as metadata icllm-control-token.
const TOKEN = 'harness-token';
const withToken = new grpc.Metadata();
withToken.set('icllm-control-token', TOKEN);

function call<T>(client: Client, method: string, request: object, metadata = withToken): Promise<T> {
    return new Promise((ok, fail) =>
        client[method](request, metadata, (error: grpc.ServiceError | null, response: T) =>
            error ? fail(error) : ok(response)
        )
    );
}

// A Buffer from gRPC may be a view into a larger pooled ArrayBuffer: give Candid its own copy.
const bytes = (buffer: Buffer) => Uint8Array.from(buffer);

before(async () => {
    const portFile = join(mkdtempSync(join(tmpdir(), 'icllm-ts-')), 'ports.json');
    emulator = spawn(
        process.env.ICLLM_PYTHON ?? 'python3',
        [
            '-m', 'emulator', 'serve', '--grpc-port', '0', '--ollama-port', 'off', '--port-file', portFile,
            '--control-token', TOKEN
        ],
        { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] }
    );
    for (let i = 0; i < 600 && !existsSync(portFile); i++) await sleep(50); // the port file: ready
    const { grpc_target } = JSON.parse(readFileSync(portFile, 'utf8'));
    const definition = protoLoader.loadSync(PROTOS, {
        includeDirs: [join(ROOT, 'proto')],
        keepCase: true,
        defaults: true,
        longs: String,
        oneofs: true
    });
    const icllm = (grpc.loadPackageDefinition(definition) as any).icllm.v1;
    canisters = new icllm.Canisters(grpc_target, grpc.credentials.createInsecure());
    control = new icllm.Control(grpc_target, grpc.credentials.createInsecure());
});

after(() => {
    canisters?.close();
    control?.close();
    emulator?.kill('SIGTERM');
});

async function installAgent(): Promise<string> {
    const wasm = readFileSync(process.env.ICLLM_AGENT_WASM!);
    const { canister_id } = await call<{ canister_id: string }>(canisters, 'Install', { wasm, name: 'agent' });
    return canister_id;
}

async function ask(canisterId: string, method: string, arg: Uint8Array) {
    return call<{ outcome: string; reply?: Buffer; reject?: { code: number; message: string; error_code: string } }>(
        canisters,
        'Call',
        { canister_id: canisterId, method, arg: Buffer.from(arg) }
    );
}

test('the canister answers with the scripted reply, decoded by @dfinity/candid', async () => {
    await call(control, 'Reset', {});
    const agent = await installAgent();
    await call(control, 'AddRules', {
        rules: [{ match: { contains: 'ping' }, action: { reply: { content: 'pong from the emulator' } } }]
    });
    const response = await ask(agent, 'ask', IDL.encode([IDL.Text], ['ping?']));
    assert.equal(response.outcome, 'reply');
    assert.deepEqual(IDL.decode([IDL.Text], bytes(response.reply!)), ['pong from the emulator']);
    const count = await call<{ outcome: string; reply: Buffer }>(canisters, 'Call', {
        canister_id: agent,
        method: 'answers',
        arg: Buffer.from(IDL.encode([], [])),
        query: true
    });
    assert.deepEqual(IDL.decode([IDL.Nat64], bytes(count.reply)), [1n]);
});

test('a reject of the LLM canister reaches the canister, and an unknown method is rejected', async () => {
    await call(control, 'Reset', {});
    const agent = await installAgent();
    await call(control, 'AddRules', { rules: [{ action: { reject: { code: 4, message: 'no tokens left' } } }] });
    const refused = await ask(agent, 'ask', IDL.encode([IDL.Text], ['hello']));
    assert.deepEqual(IDL.decode([IDL.Text], bytes(refused.reply!)), ['rejected (4): no tokens left']);
    const unknown = await ask(agent, 'no_such_method', IDL.encode([], []));
    assert.equal(unknown.outcome, 'reject');
    assert.equal(unknown.reject!.code, 3);
    assert.equal(unknown.reject!.error_code, 'IC0536');
});

test('misuse is a gRPC status, not a crash', async () => {
    await assert.rejects(call(canisters, 'Install', { wasm: Buffer.from('not wasm') }), (error: grpc.ServiceError) => {
        assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
        assert.match(error.details, /is not a WebAssembly module/);
        return true;
    });
});

test('without the control token, Canisters and Control refuse the call and name the metadata key', async () => {
    for (const [client, method, request] of [
        [canisters, 'Install', { wasm: Buffer.from('not wasm') }],
        [control, 'Reset', {}]
    ] as const) {
        await assert.rejects(call(client, method, request, new grpc.Metadata()), (error: grpc.ServiceError) => {
            assert.equal(error.code, grpc.status.UNAUTHENTICATED);
            assert.match(error.details, /needs the emulator's control token .* as metadata icllm-control-token/);
            return true;
        });
    }
});

test("a canister's HTTP outcall is scripted over Control, and too few cycles are refused", async () => {
    await call(control, 'Reset', {});
    const wasm = readFileSync(process.env.ICLLM_MOTOKO_WASM!);
    const { canister_id } = await call<{ canister_id: string }>(canisters, 'Install', { wasm });
    const url = 'https://api.example.com/price?symbol=ICP';
    await call(control, 'AddOutcallRules', {
        rules: [{ match: { url }, response: { status: 200, body: Buffer.from('{"usd": 42.5}') } }]
    });
    const paid = await ask(canister_id, 'fetch_price', IDL.encode([IDL.Text, IDL.Nat], ['ICP', 1_000_000_000n]));
    assert.equal(paid.outcome, 'reply');
    assert.deepEqual(IDL.decode([IDL.Text], bytes(paid.reply!)), ['HTTP 200: {"usd": 42.5}']);
    const cheap = await ask(canister_id, 'fetch_price', IDL.encode([IDL.Text, IDL.Nat], ['ICP', 1000n]));
    assert.equal(cheap.outcome, 'reject');
    assert.match(cheap.reject!.message, /http_request request sent with 1000 cycles, but \d+ cycles are required/);
    const { outcalls } = await call<{ outcalls: { url: string; rule_id: string }[] }>(control, 'GetOutcalls', {});
    assert.deepEqual(
        outcalls.map((o) => [o.url, o.rule_id]),
        [
            [url, 'outcall-rule-1'],
            [url, '']
        ]
    );
});
