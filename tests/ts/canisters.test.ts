// A test harness in TypeScript, as a canister developer using pic-js or vitest would write one: it starts
// the emulator process, installs a test canister over the Canisters gRPC service, scripts the LLM's
// answer over Control, and encodes and decodes Candid with DFINITY's own @dfinity/candid.
//
// Run by tests/test_typescript_harness.py (make test) with ICLLM_PYTHON (the emulator's interpreter),
// ICLLM_AGENT_WASM (the Rust test agent), ICLLM_MOTOKO_WASM (the Motoko agent), ICLLM_WALLET_WASM (a
// Motoko wallet that calls a ledger) and ICLLM_LEDGER_WASM (a small ledger) set.
import { IDL } from '@dfinity/candid';
import { Principal } from '@dfinity/principal';
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

// The management canister, stand-ins and faults, over the same Canisters service.
const LEDGER = 'ryjl3-tyaaa-aaaaa-aaaba-cai';
const OWNER = 'rrkah-fqaaa-aaaaa-aaaaq-cai';
const ACCOUNT = new Uint8Array(32).fill(7);

async function asked(canisterId: string): Promise<bigint> {
    const count = await call<{ outcome: string; reply: Buffer }>(canisters, 'Call', {
        canister_id: canisterId,
        method: 'asked_count',
        arg: Buffer.from(IDL.encode([], [])),
        query: true
    });
    assert.equal(count.outcome, 'reply');
    return IDL.decode([IDL.Nat], bytes(count.reply))[0] as bigint;
}

test('a canister at a chosen id is upgraded with its state, stopped, started and restored', async () => {
    await call(control, 'Reset', {});
    const wasm = readFileSync(process.env.ICLLM_MOTOKO_WASM!);
    const id = 'uxrrr-q7777-77774-qaaaq-cai';
    const installed = await call<{ canister_id: string }>(canisters, 'Install', {
        wasm,
        canister_id: id,
        controllers: [OWNER, '2vxsx-fae']
    });
    assert.equal(installed.canister_id, id);
    await call(control, 'AddRules', { rules: [{ action: { reply: { content: 'noted' } } }] });
    const prompt = () => ask(id, 'prompt', IDL.encode([IDL.Text], ['remember this']));
    assert.equal((await prompt()).outcome, 'reply');
    await call(canisters, 'Upgrade', { canister_id: id }); // the same module; its heap is kept
    assert.equal(await asked(id), 1n);
    const status = await call<{ status: string; module_hash: Buffer; controllers: string[] }>(canisters, 'Status', {
        canister_id: id,
        caller: OWNER
    });
    assert.equal(status.status, 'running');
    assert.equal(status.module_hash.length, 32);
    assert.deepEqual([...status.controllers].sort(), ['2vxsx-fae', OWNER].sort());
    await call(canisters, 'Stop', { canister_id: id });
    const stopped = await ask(id, 'prompt', IDL.encode([IDL.Text], ['hello?']));
    assert.equal(stopped.reject!.error_code, 'IC0508');
    await call(canisters, 'Start', { canister_id: id });
    const { snapshot } = await call<{ snapshot: { id: Buffer } }>(canisters, 'TakeSnapshot', { canister_id: id });
    await prompt();
    assert.equal(await asked(id), 2n);
    await call(canisters, 'LoadSnapshot', { canister_id: id, snapshot_id: snapshot.id });
    assert.equal(await asked(id), 1n);
    await assert.rejects(call(canisters, 'Stop', { canister_id: id, caller: LEDGER }), (error: grpc.ServiceError) => {
        assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
        assert.equal(error.metadata.get('icllm-error-code')[0], 'IC0512');
        return true;
    });
});

test("a stand-in answers at the ledger's id, and a fault rejects a call between two canisters", async () => {
    await call(control, 'Reset', {});
    const did = readFileSync(join(ROOT, 'fixtures', 'canisters', 'motoko', 'ledger', 'ledger.did'), 'utf8');
    await call(canisters, 'CreateStub', { canister_id: LEDGER, did });
    await call(canisters, 'AddStubRules', {
        canister_id: LEDGER,
        rules: [{ method: 'account_balance', times: 1, reply_json: '[{"e8s": 5}]' }]
    });
    const wallet = (
        await call<{ canister_id: string }>(canisters, 'Install', { wasm: readFileSync(process.env.ICLLM_WALLET_WASM!) })
    ).canister_id;
    const balanceAt = async (ledger: string) => {
        const arg = IDL.encode([IDL.Principal, IDL.Vec(IDL.Nat8)], [Principal.fromText(ledger), ACCOUNT]);
        const answer = await ask(wallet, 'balance_at', arg);
        return IDL.decode([IDL.Text], bytes(answer.reply!))[0];
    };
    assert.equal(await balanceAt(LEDGER), '5 e8s');
    const { calls } = await call<{ calls: { caller: string; rule_id: string; arg_json: string }[] }>(
        canisters,
        'ListStubCalls',
        { canister_id: LEDGER }
    );
    assert.deepEqual(
        calls.map((c) => [c.caller, c.rule_id, JSON.parse(c.arg_json)]),
        [[wallet, 'rule-1', [{ account: Buffer.from(ACCOUNT).toString('base64') }]]]
    );
    const ledger = (
        await call<{ canister_id: string }>(canisters, 'Install', { wasm: readFileSync(process.env.ICLLM_LEDGER_WASM!) })
    ).canister_id;
    await call(canisters, 'AddFaults', {
        faults: [{ callee: ledger, method: 'account_balance', times: 1, reject: { code: 2, message: 'subnet busy' } }]
    });
    assert.equal(await balanceAt(ledger), 'system_transient: subnet busy');
    assert.equal(await balanceAt(ledger), '100000000 e8s');
});
