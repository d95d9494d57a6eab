// The Vercel AI SDK's default multi-turn against Headwater: the messages are resent every turn, with
// store: true (the default), so earlier assistant output goes back as {"type": "item_reference", "id"}.
// Usage: node multi-turn.mjs BASE_URL  -> one JSON line: the texts and the tool calls made.
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, stepCountIs, tool } from 'ai';

const baseURL = process.argv[2];
const openai = createOpenAI({ baseURL, apiKey: 'unused' });
const model = openai('gpt-5-mini');
const calls = [];
const tools = {
  get_weather: tool({
    description: 'The weather in a city',
    inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }),
    execute: async ({ city }) => { calls.push(city); return 'sunny'; },
  }),
};
const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
const first = await generateText({ model, messages, tools, stopWhen: stepCountIs(3) });
messages.push(...first.response.messages);
messages.push({ role: 'user', content: 'Thanks!' });
const second = await generateText({ model, messages, tools });
console.log(JSON.stringify({ first: first.text, second: second.text, steps: first.steps.length, calls }));
