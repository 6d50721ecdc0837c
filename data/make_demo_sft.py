"""Generate data/demo_sft.json, the bundled bilingual (en/zh) alpaca-format demo dataset.

Run from the repository root:

    python data/make_demo_sft.py            # rewrites data/demo_sft.json
    python data/make_demo_sft.py --check    # exit 1 if the committed file is stale

The output is deterministic (fixed seed, stable ordering, stable JSON formatting), so the
committed JSON file is exactly what this script produces. About half of the examples are
written by hand below; the rest come from small templated families (arithmetic, unit
conversions, translation pairs, capitals) whose answers are computed, not typed.

Record keys follow the alpaca convention used by LLaMA-Factory: ``instruction``, ``input``,
``output``, plus optional ``system`` and ``history`` ([[user, assistant], ...]).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

SEED = 20240607
OUT_PATH = Path(__file__).resolve().parent / "demo_sft.json"

Example = dict[str, Any]


def ex(
    instruction: str,
    output: str,
    input: str = "",
    system: str | None = None,
    history: list[list[str]] | None = None,
) -> Example:
    record: Example = {"instruction": instruction, "input": input, "output": output}
    if system is not None:
        record["system"] = system
    if history is not None:
        record["history"] = history
    return record


# ---------------------------------------------------------------------------------------
# Hand-written examples: English
# ---------------------------------------------------------------------------------------

HAND_EN: list[Example] = [
    # general knowledge
    ex(
        "Why is the sky blue?",
        "Sunlight is scattered by the molecules in the air, and short blue wavelengths are scattered "
        "much more strongly than red ones (Rayleigh scattering). That scattered blue light reaches our "
        "eyes from every part of the sky.",
    ),
    ex(
        "How many continents are there?",
        "By the most common convention there are seven: Africa, Antarctica, Asia, Australia (Oceania), "
        "Europe, North America and South America.",
    ),
    ex(
        "What is photosynthesis?",
        "Photosynthesis is the process by which plants, algae and some bacteria use light energy to turn "
        "carbon dioxide and water into glucose, releasing oxygen as a by-product.",
    ),
    ex(
        "At what temperature does water boil at sea level?",
        "At standard sea-level pressure, pure water boils at 100 °C (212 °F).",
    ),
    ex(
        "What is the largest planet in the Solar System?",
        "Jupiter is the largest planet in the Solar System; its mass is more than twice that of all the "
        "other planets combined.",
    ),
    ex(
        "Who wrote 'Pride and Prejudice'?",
        "'Pride and Prejudice' was written by Jane Austen and first published in 1813.",
    ),
    ex(
        "What is DNA?",
        "DNA (deoxyribonucleic acid) is the molecule that carries the genetic instructions of living "
        "organisms. It is a double helix made of two strands of nucleotides.",
    ),
    ex(
        "Explain what a prime number is.",
        "A prime number is a whole number greater than 1 whose only divisors are 1 and itself. For "
        "example, 2, 3, 5, 7 and 11 are prime, while 9 is not because 9 = 3 × 3.",
    ),
    ex(
        "How long does light from the Sun take to reach Earth?",
        "About 8 minutes and 20 seconds: the Sun is roughly 150 million kilometres away and light "
        "travels at about 300,000 km per second.",
    ),
    ex("What is the chemical symbol for gold?", "The chemical symbol for gold is Au, from the Latin word 'aurum'."),
    ex(
        "What causes the seasons on Earth?",
        "The seasons come from the tilt of Earth's axis, about 23.4 degrees. As Earth orbits the Sun, each "
        "hemisphere in turn leans toward the Sun, receiving more direct sunlight and longer days.",
    ),
    ex(
        "Summarize the water cycle in one sentence.",
        "Water evaporates from oceans and land, condenses into clouds, falls back as rain or snow, and "
        "flows through rivers and groundwater back to the sea.",
    ),
    ex(
        "What is the difference between weather and climate?",
        "Weather describes short-term conditions such as today's rain or temperature, while climate is "
        "the average pattern of weather in a region over decades.",
    ),
    ex("Name the three primary colors of light.", "The additive primary colors of light are red, green and blue."),
    ex("How fast does sound travel in air?", "In dry air at 20 °C, sound travels at about 343 metres per second."),
    ex(
        "What is the boiling point of water in Kelvin?",
        "Water boils at about 373.15 K at standard atmospheric pressure, which is 100 °C.",
    ),
    # writing and language
    ex(
        "Give me three tips for writing clear emails.",
        "Put the main point or request in the first sentence, keep paragraphs short, and end with a "
        "clear next step or deadline.",
    ),
    ex(
        "Rewrite the sentence in a more formal tone.",
        "Could you please send me the report at your earliest convenience?",
        input="Hey, can you send me the report ASAP?",
    ),
    ex(
        "Correct the grammar in this sentence.",
        "She doesn't like going to the gym on Mondays.",
        input="She don't like going to the gym on mondays.",
    ),
    ex(
        "Classify the sentiment of this review as positive, negative or neutral.",
        "Neutral. The review praises the battery life but criticises the screen, so the positive and "
        "negative points balance out.",
        input="The battery lasts all day, but the screen scratches far too easily.",
    ),
    ex(
        "Extract the date from the text.",
        "14 March 2025.",
        input="The workshop will take place on 14 March 2025 in Room 3B.",
    ),
    ex("Give a synonym for 'happy'.", "A common synonym for 'happy' is 'joyful'; 'cheerful' and 'glad' also work."),
    ex(
        "What is the plural of 'mouse'?",
        "The plural of 'mouse' is 'mice'. For computer mice, 'mouses' is occasionally seen, but 'mice' is standard.",
    ),
    # reasoning and arithmetic
    ex("Is 221 a prime number?", "No. 221 = 13 × 17, so it is not prime."),
    ex(
        "If a train travels 180 km in 2 hours, what is its average speed?",
        "Its average speed is 180 km ÷ 2 h = 90 km/h.",
    ),
    ex(
        "A shirt costs $40 and is discounted by 25%. What is the sale price?",
        "25% of $40 is $10, so the sale price is $30.",
    ),
    ex("What is the next number in the sequence 2, 4, 8, 16?", "32. Each number is double the previous one."),
    ex("Sort these numbers in ascending order.", "3, 7, 19, 25, 42", input="42, 7, 19, 3, 25"),
    ex("What is 15% of 80?", "15% of 80 is 0.15 × 80 = 12."),
    ex("How many seconds are there in a day?", "There are 24 × 60 × 60 = 86,400 seconds in a day."),
    # coding
    ex("Write a Python function that reverses a string.", "def reverse_string(s: str) -> str:\n    return s[::-1]"),
    ex(
        "What does the len() function do in Python?",
        "len() returns the number of items in an object, such as the characters in a string or the "
        "elements in a list. For example, len([1, 2, 3]) returns 3.",
    ),
    ex(
        "How do I read a text file line by line in Python?",
        "Open it in a with statement and iterate over the file object:\n\n"
        'with open("notes.txt", encoding="utf-8") as f:\n    for line in f:\n        print(line.rstrip())',
    ),
    ex(
        "What is the difference between a list and a tuple in Python?",
        "A list is mutable, so you can add, remove or change its elements, while a tuple cannot be "
        "changed once created. That is why tuples can be dictionary keys and lists cannot.",
    ),
    ex(
        "Explain what this code prints.",
        "It prints 10, because range(5) yields 0, 1, 2, 3 and 4, and their sum is 10.",
        input="print(sum(range(5)))",
    ),
    ex("Write a SQL query that counts the rows in a table named orders.", "SELECT COUNT(*) FROM orders;"),
    ex(
        "What does git rebase do?",
        "git rebase replays your branch's commits on top of another base commit, giving a linear "
        "history instead of a merge commit. Avoid rebasing commits that others have already pulled.",
    ),
    ex(
        "How do I create a Python virtual environment?",
        "Run python -m venv .venv, then activate it with source .venv/bin/activate on Linux or macOS, "
        "or .venv\\Scripts\\activate on Windows.",
    ),
    ex(
        "Fix the bug in this function.",
        "The + 1 is wrong; the average is just the sum divided by the count:\n\n"
        "def average(xs):\n    return sum(xs) / len(xs)",
        input="def average(xs):\n    return sum(xs) / len(xs) + 1",
    ),
    ex(
        "What is Big-O notation?",
        "Big-O notation describes how the running time or memory of an algorithm grows with the input "
        "size. For example, binary search is O(log n) and a single loop over all elements is O(n).",
    ),
    ex("Write a shell command that counts the lines in data.txt.", "wc -l data.txt"),
    ex(
        "What does the HTTP status code 404 mean?",
        "404 means Not Found: the server was reached, but it has no resource at the requested URL.",
    ),
    # fine-tuning and ML engineering
    ex(
        "What is LoRA?",
        "LoRA (Low-Rank Adaptation) freezes the pretrained weights and trains a pair of small low-rank "
        "matrices whose product is added to selected weight matrices. Only those matrices are trained, "
        "so memory use drops and the adapter is just a few megabytes.",
    ),
    ex(
        "What is the difference between LoRA and QLoRA?",
        "QLoRA applies LoRA on top of a base model whose frozen weights are quantized to 4 bits, usually "
        "in the NF4 format. The adapters are still trained in higher precision, so a large model can be "
        "fine-tuned on a single GPU.",
    ),
    ex(
        "What does the learning rate control?",
        "The learning rate sets the size of each parameter update during gradient descent. Too high and "
        "training diverges or oscillates; too low and it converges very slowly.",
    ),
    ex(
        "Why do we use gradient accumulation?",
        "Gradient accumulation sums gradients over several micro-batches before each optimizer step, so "
        "you can train with a large effective batch size when only a small batch fits in GPU memory.",
    ),
    ex(
        "What is the effective batch size with a micro batch size of 2, gradient accumulation of 8 and 4 GPUs?",
        "The effective batch size is 2 × 8 × 4 = 64 sequences per optimizer step.",
    ),
    ex(
        "What does ZeRO stage 3 shard?",
        "ZeRO stage 3 partitions the optimizer states, the gradients and the model parameters across the "
        "data-parallel ranks. Stage 1 shards only the optimizer states, and stage 2 adds the gradients.",
    ),
    ex(
        "What is gradient checkpointing?",
        "Gradient checkpointing keeps only some activations during the forward pass and recomputes the "
        "rest during the backward pass. It costs roughly one extra forward pass but saves a lot of "
        "activation memory.",
    ),
    ex(
        "Why are prompt tokens usually masked out of the loss in supervised fine-tuning?",
        "Their labels are set to -100 so the loss is computed only on the response tokens. The model "
        "then learns to produce answers instead of learning to repeat the questions.",
    ),
    ex(
        "What is sequence packing?",
        "Packing concatenates several short training examples into one sequence up to the maximum "
        "length, which reduces padding and speeds up training. Careful implementations also block "
        "attention across example boundaries.",
    ),
    ex(
        "What is a chat template?",
        "A chat template is the rule that turns a list of messages into the exact text a model was "
        "trained on, including role markers such as <|im_start|> and <|im_end|>. Using the wrong "
        "template at inference time usually makes the answers worse.",
    ),
    ex(
        "What does DPO stand for, and what does it do?",
        "DPO stands for Direct Preference Optimization. It trains a model directly on pairs of chosen and "
        "rejected answers with a simple classification-style loss, without a separate reward model or "
        "reinforcement learning.",
    ),
    ex(
        "What is bf16 and why is it popular for training?",
        "bf16 (bfloat16) is a 16-bit floating-point format with the same 8-bit exponent as fp32 but fewer "
        "mantissa bits. Its wide range keeps training stable without loss scaling while halving memory "
        "compared with fp32.",
    ),
    ex(
        "What is warmup in a learning-rate schedule?",
        "Warmup raises the learning rate gradually from near zero to its target value over the first "
        "steps, which avoids large, unstable updates while the optimizer statistics are still poor.",
    ),
    ex(
        "My loss becomes NaN after a few hundred steps. What should I check first?",
        "Lower the learning rate, make sure gradient clipping is on, and check for fp16 overflow; "
        "switching to bf16 often fixes it. Also look for broken examples whose labels are all masked.",
    ),
    ex(
        "What is overfitting?",
        "Overfitting happens when a model fits the training data, noise included, so closely that it "
        "does worse on new data. A validation loss that rises while the training loss keeps falling is "
        "the typical sign.",
    ),
    ex(
        "What does weight decay do?",
        "Weight decay shrinks the weights slightly at every step, which regularizes the model and "
        "discourages very large parameter values. AdamW applies it separately from the gradient update.",
    ),
    ex(
        "How much memory do the weights of a 7B-parameter model take in bf16?",
        "Each parameter takes 2 bytes in bf16, so 7 billion parameters need about 14 GB (roughly 13 GiB) "
        "for the weights alone, before activations, gradients and optimizer states.",
    ),
    ex("What is an epoch?", "An epoch is one full pass of the training algorithm over the entire training dataset."),
    ex(
        "What is tokenization?",
        "Tokenization splits text into units called tokens, such as words, subwords or bytes, and maps "
        "each one to an integer ID that the model can process.",
    ),
    ex(
        "Why does a byte-level BPE tokenizer never produce unknown tokens?",
        "Its base vocabulary contains all 256 possible byte values, so any UTF-8 text can be encoded, in "
        "the worst case with one token per byte.",
    ),
    ex(
        "What is a validation set for?",
        "A validation set is held-out data used during development to tune hyperparameters and detect "
        "overfitting, without touching the final test set.",
    ),
    ex(
        "What is perplexity?",
        "Perplexity is the exponential of the average negative log-likelihood per token. Lower perplexity "
        "means the model assigns higher probability to the evaluation text.",
    ),
    # with a system prompt
    ex(
        "What is machine learning?",
        "Machine learning is a field of computer science in which systems learn patterns from data "
        "instead of being programmed with explicit rules.",
        system="You are a concise assistant. Answer in one sentence.",
    ),
    ex(
        "How many days are there in a leap year?",
        "Arr, a leap year has 366 days, matey, one more than the usual 365!",
        system="You are a pirate who still gives correct answers.",
    ),
    ex(
        "Give the name and the boiling point in Celsius of water.",
        '{"name": "water", "boiling_point_celsius": 100}',
        system="You are a helpful assistant that always answers in JSON.",
    ),
    ex(
        "Why do we have day and night?",
        "Earth spins like a top, once every day. When our side faces the Sun we have day, and when it "
        "turns away we have night.",
        system="You are a patient tutor for young children.",
    ),
    # multi-turn (history)
    ex(
        "What is my name?",
        "Your name is Lina.",
        history=[["My name is Lina.", "Nice to meet you, Lina! How can I help you today?"]],
    ),
    ex("And what is that divided by 3?", "144 ÷ 3 = 48.", history=[["What is 12 × 12?", "12 × 12 = 144."]]),
    ex(
        "How do I print hello world in it?",
        'Use the print function: print("Hello, world!")',
        history=[
            [
                "Recommend a programming language for beginners.",
                "Python is a good first language: its syntax is readable and there is a huge amount "
                "of learning material.",
            ]
        ],
    ),
    ex(
        "And to centimetres?",
        "5 km = 500000 cm, since one metre has 100 centimetres.",
        history=[["Convert 5 km to metres.", "5 km = 5000 m."]],
    ),
]

# ---------------------------------------------------------------------------------------
# Hand-written examples: Chinese
# ---------------------------------------------------------------------------------------

HAND_ZH: list[Example] = [
    # 常识
    ex("中国最长的河流是哪一条？", "中国最长的河流是长江，全长约6300千米，也是亚洲第一长河。"),
    ex("一年有多少个节气？", "中国传统历法中一年有二十四个节气，例如立春、清明、夏至和冬至。"),
    ex(
        "月亮为什么会有圆缺变化？",
        "月亮本身不发光，我们看到的是被太阳照亮的部分。月亮绕地球公转时，我们看到的受光面大小不断变化，"
        "于是出现了新月、上弦月、满月和下弦月。",
    ),
    ex("水的化学式是什么？", "水的化学式是H2O，表示一个水分子由两个氢原子和一个氧原子组成。"),
    ex(
        "《红楼梦》的作者是谁？",
        "《红楼梦》前八十回的作者是清代的曹雪芹；后四十回的作者尚有争议，传统上认为由高鹗续写。",
    ),
    ex(
        "地球绕太阳公转一周大约需要多长时间？",
        "大约365.25天，也就是一年。多出来的约四分之一天每四年累积成一天，所以有闰年。",
    ),
    ex(
        "植物为什么需要阳光？",
        "植物通过光合作用利用光能，把二氧化碳和水合成葡萄糖等有机物并释放氧气。没有阳光，它们就无法制造生长所需的养分。",
    ),
    ex("人体最大的器官是什么？", "人体最大的器官是皮肤，成年人的皮肤面积约为1.5到2平方米。"),
    ex("珠穆朗玛峰有多高？", "根据2020年中国和尼泊尔联合公布的测量结果，珠穆朗玛峰的雪面高程为8848.86米。"),
    ex(
        "什么是勾股定理？",
        "勾股定理指出，直角三角形两条直角边的平方和等于斜边的平方，即 a² + b² = c²。例如两条直角边为3和4时，斜边为5。",
    ),
    ex(
        "太阳系有几颗行星？",
        "太阳系有八颗行星，按离太阳由近到远依次是水星、金星、地球、火星、木星、土星、天王星和海王星。",
    ),
    ex("“温故而知新”是什么意思？", "这句话出自《论语》，意思是温习学过的知识，能从中获得新的理解和体会。"),
    ex(
        "长城主要是在哪个朝代修建的？",
        "长城的修建始于春秋战国时期，秦朝把各段连接起来，今天保存最完整的大部分城墙则是明朝修建的。",
    ),
    ex(
        "为什么冬天呼出的气会变成白雾？",
        "呼出的气体温暖且含有水蒸气，遇到冷空气后迅速降温，水蒸气凝结成微小的水滴，看起来就像白雾。",
    ),
    ex("什么是可再生能源？请举例。", "可再生能源是能在自然界中不断补充的能源，例如太阳能、风能、水能和地热能。"),
    ex("一天有多少小时？一周有多少天？", "一天有24小时，一周有7天。"),
    # 语言任务
    ex("把下面的句子改写得更礼貌一些。", "麻烦您有空时把文件发给我，谢谢！", input="把文件发给我。"),
    ex(
        "找出句子中的错别字并改正。",
        "“时门”应改为“时间”：我们应该珍惜时间，努力学习。",
        input="我们应该珍惜时门，努力学习。",
    ),
    ex(
        "判断下面这条评论的情感是正面、负面还是中性。",
        "正面。评论者对物流速度和包装都很满意，并表示会再次购买。",
        input="物流很快，包装也很仔细，下次还会再买。",
    ),
    ex(
        "用一句话总结下面的段落。",
        "小明坚持晨跑一年，从跑不完两公里进步到能轻松跑完十公里。",
        input="小明每天早上六点起床跑步，坚持了整整一年。刚开始他连两公里都跑不完，现在已经能轻松跑完十公里了。",
    ),
    ex("请用“坚持”造一个句子。", "只要每天坚持学习一点新知识，一年后你会发现自己进步很大。"),
    ex("“画蛇添足”这个成语是什么意思？", "比喻做了多余的事，不但没有好处，反而把事情弄糟了。"),
    ex("写一句关于秋天的短诗。", "秋风轻拂金黄的稻田，落叶在夕阳里慢慢旋转。"),
    ex("“高兴”的反义词是什么？", "“高兴”的反义词是“难过”，也可以说“伤心”。"),
    # 数学
    ex("小红有15个苹果，送给朋友6个，又买了4个，现在有几个？", "15 - 6 + 4 = 13，小红现在有13个苹果。"),
    ex(
        "一个长方形长8厘米、宽5厘米，它的面积和周长分别是多少？",
        "面积是 8 × 5 = 40 平方厘米，周长是 (8 + 5) × 2 = 26 厘米。",
    ),
    ex("100以内最大的质数是多少？", "100以内最大的质数是97。"),
    ex("一件商品原价200元，打八折后多少钱？", "打八折就是原价的80%，200 × 0.8 = 160元。"),
    ex("鸡兔同笼，共有10个头、28只脚，鸡和兔各有几只？", "兔有4只，鸡有6只。检验：6 × 2 + 4 × 4 = 28只脚。"),
    ex("1到100所有整数的和是多少？", "1 + 2 + … + 100 = 100 × 101 ÷ 2 = 5050。"),
    ex("一个正方形的边长是6米，它的面积是多少？", "面积是 6 × 6 = 36 平方米。"),
    # 编程
    ex("用Python写一个函数，判断一个整数是否为偶数。", "def is_even(n: int) -> bool:\n    return n % 2 == 0"),
    ex(
        "Python中的字典是什么？",
        '字典（dict）是Python中存储键值对的数据结构，可以通过键快速查找对应的值，例如 {"name": "小王", "age": 20}。',
    ),
    ex(
        "如何在Python中把字符串转换为整数？",
        '使用内置函数 int()，例如 int("42") 返回整数 42。如果字符串不是合法的整数，会抛出 ValueError。',
    ),
    ex(
        "解释一下什么是递归。",
        "递归是指函数在执行过程中调用自身。正确的递归必须有终止条件，例如计算阶乘时，n 为 0 或 1 就直接返回 1。",
    ),
    ex(
        "下面的代码输出什么？",
        "输出 [1, 2, 3, 4]。因为 y = x 并没有复制列表，x 和 y 指向同一个列表对象。",
        input="x = [1, 2, 3]\ny = x\ny.append(4)\nprint(x)",
    ),
    ex(
        "git pull 和 git fetch 有什么区别？",
        "git fetch 只从远程仓库下载最新的提交，不改动本地分支；git pull 相当于先 fetch，再把远程分支合并（或变基）到当前分支。",
    ),
    ex(
        "什么是JSON？",
        "JSON是一种轻量级的文本数据交换格式，用键值对和数组表示结构化数据，既便于人阅读，也便于程序解析。",
    ),
    ex("Linux中如何查看当前目录下的文件？", "使用 ls 命令；加上 -l 参数可以显示详细信息，加上 -a 可以显示隐藏文件。"),
    ex("用Python写一行代码，求列表 nums 中的最大值。", "max_value = max(nums)"),
    # 微调与机器学习工程
    ex(
        "什么是微调（fine-tuning）？",
        "微调是在预训练模型的基础上，用特定任务或领域的数据继续训练，使模型更好地完成该任务。",
    ),
    ex(
        "LoRA中的秩（rank）有什么作用？",
        "秩决定了LoRA低秩矩阵的大小。秩越大，可训练参数越多、表达能力越强，但显存占用和过拟合风险也随之增加，常用取值为8到64。",
    ),
    ex(
        "全参数微调和LoRA微调各有什么优缺点？",
        "全参数微调更新所有权重，效果上限高，但显存和存储开销大；LoRA只训练少量新增参数，省显存、适配器文件小，但在某些任务上效果可能略逊。",
    ),
    ex(
        "什么是DeepSpeed ZeRO？",
        "ZeRO是DeepSpeed提供的显存优化技术，它把优化器状态、梯度和模型参数切分到多张GPU上，避免每张卡都保存完整副本，从而能训练更大的模型。",
    ),
    ex(
        "训练时显存不够（OOM）怎么办？",
        "可以减小单卡批大小并增加梯度累积步数，开启梯度检查点，使用bf16混合精度，或者改用LoRA、QLoRA和DeepSpeed ZeRO等方法。",
    ),
    ex(
        "什么是指令微调？",
        "指令微调是用“指令—回答”格式的数据训练模型，让它学会理解并遵循人类的指令，是训练对话模型的常见步骤。",
    ),
    ex(
        "RLHF是什么的缩写？",
        "RLHF是Reinforcement Learning from Human Feedback的缩写，即基于人类反馈的强化学习。它先用人类偏好数据训练奖励模型，再用PPO等强化学习算法优化语言模型。",
    ),
    ex(
        "学习率预热（warmup）有什么用？",
        "在训练初期把学习率从很小的值逐步升到设定值，可以避免一开始更新步长过大导致训练不稳定。",
    ),
    ex(
        "什么是过拟合？如何缓解？",
        "过拟合是指模型在训练集上表现很好，在新数据上却变差。可以通过增加数据、提前停止、加入正则化或dropout、减少训练轮数来缓解。",
    ),
    ex(
        "为什么大模型训练常用bf16而不是fp16？",
        "bf16的指数位与fp32相同，数值范围大、不容易溢出，通常不需要损失缩放；fp16范围较小，更容易出现溢出和NaN。",
    ),
    ex(
        "什么是分词器（tokenizer）？",
        "分词器负责把文本切分成词元（token）并映射成整数ID，模型只能处理这些ID。不同模型的分词器通常不能混用。",
    ),
    ex("多卡训练时，全局批大小怎么计算？", "全局批大小 = 单卡批大小 × 梯度累积步数 × GPU数量。例如 4 × 4 × 8 = 128。"),
    ex(
        "什么是损失函数？",
        "损失函数衡量模型预测与真实答案之间的差距，训练的目标就是调整参数让损失尽可能小。语言模型通常使用交叉熵损失。",
    ),
    ex(
        "Transformer中的注意力机制起什么作用？",
        "注意力机制让每个词元根据与其他词元的相关程度，对它们的信息加权汇总，从而捕捉句子中远距离的依赖关系。",
    ),
    ex(
        "检查点（checkpoint）有什么用？",
        "检查点保存训练过程中的模型参数、优化器状态和步数等信息，训练中断后可以从检查点恢复，也可以挑选效果最好的检查点使用。",
    ),
    ex(
        "什么是量化？",
        "量化是用更少的比特（如8比特或4比特）表示模型权重，以减少显存占用、加快推理，代价是可能带来少量精度损失。",
    ),
    ex(
        "为什么监督微调时通常只在回答部分计算损失？",
        "把提示部分的标签设为-100后，损失只来自回答，模型学到的是如何回答问题，而不是复述问题。",
    ),
    # 带系统提示
    ex(
        "什么是人工智能？",
        "人工智能是让计算机模拟人类的感知、推理和学习等能力的技术。",
        system="你是一名简洁的助手，回答不超过一句话。",
    ),
    ex(
        "为什么任何数乘以0都等于0？",
        "乘法表示几个相同的数相加，乘以0就是一个也没有加，所以结果是0。",
        system="你是一位耐心的小学数学老师。",
    ),
    ex("给出北京的名称和所在国家。", '{"城市": "北京", "国家": "中国"}', system="你是一个只用JSON回答的助手。"),
    ex(
        "“谢谢”用英语怎么说？",
        "“谢谢”在英语中是 “Thank you”，也可以简单地说 “Thanks”。",
        system="You are a bilingual assistant. Answer in the user's language.",
    ),
    # 多轮（history）
    ex(
        "需要准备哪些材料？",
        "需要两三个番茄、三个鸡蛋，再加上适量的食用油和盐，喜欢的话还可以加一点糖和葱花。",
        history=[["我想学做饭，从哪道菜开始比较好？", "可以从番茄炒蛋开始，它材料简单、步骤少，很适合新手。"]],
    ),
    ex(
        "两者相加是多少？",
        "9 + 27 = 36。",
        history=[["3的平方是多少？", "3的平方是9。"], ["那它的立方呢？", "3的立方是27。"]],
    ),
    ex(
        "你还记得我是做什么的吗？",
        "记得，你说过你是一名大学生。",
        history=[["我叫小李，是一名大学生。", "你好，小李！很高兴认识你，有什么可以帮你的吗？"]],
    ),
]

# ---------------------------------------------------------------------------------------
# Hand-written translation pairs (each used once, direction alternates)
# ---------------------------------------------------------------------------------------

SENTENCE_PAIRS: list[tuple[str, str]] = [
    ("Good morning! Did you sleep well?", "早上好！你睡得好吗？"),
    ("The meeting has been moved to Thursday afternoon.", "会议改到了星期四下午。"),
    ("Please save your work before closing the program.", "关闭程序前请先保存你的工作。"),
    ("This model was fine-tuned on a small instruction dataset.", "这个模型是在一个小型指令数据集上微调的。"),
    ("Learning a new language takes patience and practice.", "学习一门新语言需要耐心和练习。"),
    ("The train to Shanghai leaves at eight o'clock.", "去上海的火车八点出发。"),
    ("Could you recommend a good book?", "你能推荐一本好书吗？"),
    ("It is going to rain tomorrow, so bring an umbrella.", "明天会下雨，记得带伞。"),
    ("The training loss is still decreasing.", "训练损失仍在下降。"),
    ("I have lived in this city for five years.", "我在这座城市住了五年了。"),
    ("Drinking enough water is good for your health.", "喝足够的水有益于健康。"),
    ("The library is closed on public holidays.", "图书馆在法定节假日闭馆。"),
    ("Reduce the batch size if you run out of GPU memory.", "如果显存不足，请减小批大小。"),
    ("She plays the piano every evening.", "她每天晚上都弹钢琴。"),
    ("Thank you for your help; I really appreciate it.", "谢谢你的帮助，我非常感激。"),
    ("A checkpoint is saved every 500 steps.", "每500步保存一次检查点。"),
    ("How much does this jacket cost?", "这件夹克多少钱？"),
    ("Spring is the best season to visit Hangzhou.", "春天是游览杭州的最佳季节。"),
    ("Please write your name at the top of the page.", "请把你的名字写在页面顶部。"),
    ("The results of the experiment are reproducible.", "实验结果是可以复现的。"),
    ("My phone battery is almost dead.", "我的手机快没电了。"),
    ("We need more data to evaluate the model fairly.", "我们需要更多数据来公平地评估模型。"),
    ("Turn left at the second traffic light.", "在第二个红绿灯处左转。"),
    ("He has been learning to cook since last summer.", "他从去年夏天开始学做饭。"),
    ("Open-source software can be used and modified freely.", "开源软件可以自由使用和修改。"),
    ("The cat is sleeping on the sofa.", "猫正在沙发上睡觉。"),
    ("Every process loads the same base model.", "每个进程都加载同一个基础模型。"),
    ("Don't forget to back up your files.", "别忘了备份你的文件。"),
    ("The museum is within walking distance of the hotel.", "博物馆离酒店步行就能到。"),
    ("Short answers are easier to check.", "简短的回答更容易核对。"),
    ("Exercise regularly and get enough sleep.", "要经常锻炼，保证充足的睡眠。"),
    ("The adapter file is only a few megabytes.", "适配器文件只有几兆字节。"),
]

WORD_PAIRS: list[tuple[str, str]] = [
    ("computer", "计算机"),
    ("library", "图书馆"),
    ("weather", "天气"),
    ("knowledge", "知识"),
    ("friendship", "友谊"),
    ("engineer", "工程师"),
    ("gradient", "梯度"),
    ("dataset", "数据集"),
]

# (country en, capital en, country zh, capital zh)
CAPITALS: list[tuple[str, str, str, str]] = [
    ("France", "Paris", "法国", "巴黎"),
    ("Japan", "Tokyo", "日本", "东京"),
    ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Australia", "Canberra", "澳大利亚", "堪培拉"),
    ("Brazil", "Brasília", "巴西", "巴西利亚"),
    ("Egypt", "Cairo", "埃及", "开罗"),
    ("Germany", "Berlin", "德国", "柏林"),
    ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"),
    ("India", "New Delhi", "印度", "新德里"),
    ("South Korea", "Seoul", "韩国", "首尔"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Argentina", "Buenos Aires", "阿根廷", "布宜诺斯艾利斯"),
    ("Thailand", "Bangkok", "泰国", "曼谷"),
    ("Mexico", "Mexico City", "墨西哥", "墨西哥城"),
    ("Norway", "Oslo", "挪威", "奥斯陆"),
    ("Turkey", "Ankara", "土耳其", "安卡拉"),
    ("New Zealand", "Wellington", "新西兰", "惠灵顿"),
    ("Vietnam", "Hanoi", "越南", "河内"),
]


# ---------------------------------------------------------------------------------------
# Templated families (answers are computed)
# ---------------------------------------------------------------------------------------


def arithmetic(rng: random.Random, lang: str, count: int) -> list[Example]:
    out: list[Example] = []
    seen: set[tuple[str, int, int]] = set()
    ops = ["+", "-", "×", "÷"]
    while len(out) < count:
        op = ops[len(out) % 4]
        if op == "+":
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            c = a + b
        elif op == "-":
            a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
            if a == b:
                continue
            c = a - b
        elif op == "×":
            a, b = rng.randint(3, 99), rng.randint(2, 30)
            c = a * b
        else:
            b, c = rng.randint(2, 25), rng.randint(2, 50)
            a = b * c
        if (op, a, b) in seen:
            continue
        seen.add((op, a, b))
        if lang == "en":
            question = {
                "+": f"What is {a} + {b}?",
                "-": f"Calculate {a} - {b}.",
                "×": f"What is {a} multiplied by {b}?",
                "÷": f"What is {a} divided by {b}?",
            }[op]
            answer = f"{a} {op} {b} = {c}."
        else:
            question = {
                "+": f"{a}加{b}等于多少？",
                "-": f"计算 {a} 减 {b}。",
                "×": f"{a}乘以{b}是多少？",
                "÷": f"{a}除以{b}等于几？",
            }[op]
            answer = f"{a} {op} {b} = {c}。"
        out.append(ex(question, answer))
    return out


def word_problems(rng: random.Random, lang: str, count: int) -> list[Example]:
    # (container, containers, things) / (container, measure word, thing)
    items_en = [
        ("box", "boxes", "pencils"),
        ("shelf", "shelves", "books"),
        ("bag", "bags", "apples"),
        ("crate", "crates", "bottles"),
        ("row", "rows", "chairs"),
        ("page", "pages", "stickers"),
    ]
    items_zh = [
        ("盒", "支", "铅笔"),
        ("个书架", "本", "书"),
        ("袋", "个", "苹果"),
        ("箱", "瓶", "矿泉水"),
        ("排", "把", "椅子"),
        ("页", "张", "贴纸"),
    ]
    out: list[Example] = []
    for i in range(count):
        n, k = rng.randint(6, 48), rng.randint(3, 12)
        if lang == "en":
            one, many, things = items_en[i % len(items_en)]
            q = f"Each {one} holds {n} {things}. How many {things} are in {k} {many}?"
            a = f"{k} × {n} = {k * n}, so there are {k * n} {things}."
        else:
            unit, measure, thing = items_zh[i % len(items_zh)]
            q = f"每{unit}有{n}{measure}{thing}，{k}{unit}一共有多少{measure}{thing}？"
            a = f"{n} × {k} = {n * k}，一共有{n * k}{measure}{thing}。"
        out.append(ex(q, a))
    return out


def fmt_decimal(d: Decimal) -> str:
    s = format(d.normalize(), "f")
    return s


def unit_conversions(rng: random.Random, lang: str) -> list[Example]:
    out: list[Example] = []
    # (en question, en answer, zh question, zh answer) builders, one example per kind
    kinds = [
        ("km_m", lambda x: (x, x * 1000), range(2, 60)),
        ("m_cm", lambda x: (x, x * 100), range(2, 30)),
        ("kg_g", lambda x: (x, x * 1000), range(2, 40)),
        ("h_min", lambda x: (x, x * 60), range(2, 24)),
        ("min_s", lambda x: (x, x * 60), range(2, 90)),
        ("c_f", lambda x: (x, x * 9 // 5 + 32), range(-20, 101, 5)),
        ("in_cm", lambda x: (x, fmt_decimal(Decimal(x) * Decimal("2.54"))), range(2, 40)),
        ("gib_mib", lambda x: (x, x * 1024), range(2, 64)),
        ("l_ml", lambda x: (x, x * 1000), range(2, 20)),
        ("day_h", lambda x: (x, x * 24), range(2, 15)),
        ("t_kg", lambda x: (x, x * 1000), range(2, 25)),
        ("mile_km", lambda x: (x, fmt_decimal(round(Decimal(x) * Decimal("1.609344"), 2))), range(2, 30)),
    ]
    for name, conv, values in kinds:
        x, y = conv(rng.choice(list(values)))
        if lang == "en":
            q, a = {
                "km_m": (f"Convert {x} kilometres to metres.", f"{x} km = {y} m, because 1 km is 1000 m."),
                "m_cm": (f"How many centimetres are in {x} metres?", f"{x} m = {y} cm."),
                "kg_g": (f"How many grams are in {x} kilograms?", f"{x} kg = {y} g."),
                "h_min": (f"How many minutes are in {x} hours?", f"{x} hours = {x} × 60 = {y} minutes."),
                "min_s": (f"Convert {x} minutes to seconds.", f"{x} minutes = {y} seconds."),
                "c_f": (f"Convert {x} °C to Fahrenheit.", f"{x} °C × 9/5 + 32 = {y} °F."),
                "in_cm": (
                    f"How many centimetres is {x} inches?",
                    f"{x} inches = {y} cm, since 1 inch is exactly 2.54 cm.",
                ),
                "gib_mib": (f"How many MiB are in {x} GiB?", f"{x} GiB = {x} × 1024 = {y} MiB."),
                "l_ml": (f"How many millilitres are in {x} litres?", f"{x} L = {y} mL."),
                "day_h": (f"How many hours are in {x} days?", f"{x} days = {x} × 24 = {y} hours."),
                "t_kg": (f"How many kilograms are in {x} metric tonnes?", f"{x} t = {y} kg."),
                "mile_km": (
                    f"Convert {x} miles to kilometres.",
                    f"{x} miles is about {y} km, since 1 mile is 1.609344 km.",
                ),
            }[name]
        else:
            q, a = {
                "km_m": (f"{x}千米等于多少米？", f"{x}千米 = {y}米，因为1千米等于1000米。"),
                "m_cm": (f"{x}米是多少厘米？", f"{x}米 = {y}厘米。"),
                "kg_g": (f"{x}千克等于多少克？", f"{x}千克 = {y}克。"),
                "h_min": (f"{x}小时是多少分钟？", f"{x} × 60 = {y}，{x}小时是{y}分钟。"),
                "min_s": (f"把{x}分钟换算成秒。", f"{x}分钟 = {y}秒。"),
                "c_f": (f"{x}摄氏度是多少华氏度？", f"{x} × 9/5 + 32 = {y}，即{y}华氏度。"),
                "in_cm": (f"{x}英寸是多少厘米？", f"1英寸正好是2.54厘米，所以{x}英寸 = {y}厘米。"),
                "gib_mib": (f"{x} GiB 等于多少 MiB？", f"{x} × 1024 = {y}，即{y} MiB。"),
                "l_ml": (f"{x}升等于多少毫升？", f"{x}升 = {y}毫升。"),
                "day_h": (f"{x}天一共有多少小时？", f"{x} × 24 = {y}，{x}天有{y}小时。"),
                "t_kg": (f"{x}吨等于多少千克？", f"{x}吨 = {y}千克。"),
                "mile_km": (f"{x}英里大约是多少千米？", f"1英里等于1.609344千米，所以{x}英里约为{y}千米。"),
            }[name]
        out.append(ex(q, a))
    return out


def translations(rng: random.Random) -> list[Example]:
    out: list[Example] = []
    to_zh = ["Translate the following sentence into Chinese.", "请将下面的句子翻译成中文。", "Translate into Chinese:"]
    to_en = ["Translate the following sentence into English.", "把下面的句子翻译成英文。", "请翻译成英语："]
    for i, (en, zh) in enumerate(SENTENCE_PAIRS):
        if i % 2 == 0:
            out.append(ex(rng.choice(to_zh), zh, input=en))
        else:
            out.append(ex(rng.choice(to_en), en, input=zh))
    for i, (en, zh) in enumerate(WORD_PAIRS):
        if i % 2 == 0:
            out.append(ex(f'What is the Chinese word for "{en}"?', f'"{en}" in Chinese is “{zh}”.'))
        else:
            out.append(ex(f"“{zh}”用英语怎么说？", f'“{zh}”的英文是 "{en}"。'))
    return out


def capitals(rng: random.Random) -> list[Example]:
    out: list[Example] = []
    en_q = ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}."]
    zh_q = ["{c}的首都是哪里？", "{c}的首都是哪座城市？", "请说出{c}的首都。"]
    for c_en, cap_en, c_zh, cap_zh in CAPITALS:
        out.append(ex(rng.choice(en_q).format(c=c_en), f"The capital of {c_en} is {cap_en}."))
        out.append(ex(rng.choice(zh_q).format(c=c_zh), f"{c_zh}的首都是{cap_zh}。"))
    return out


def build() -> list[Example]:
    rng = random.Random(SEED)
    families: list[Example] = []
    families += arithmetic(rng, "en", 16)
    families += arithmetic(rng, "zh", 16)
    families += word_problems(rng, "en", 6)
    families += word_problems(rng, "zh", 6)
    families += unit_conversions(rng, "en")
    families += unit_conversions(rng, "zh")
    families += translations(rng)
    families += capitals(rng)

    examples = HAND_EN + HAND_ZH + families
    # interleave deterministically so that a max_samples prefix is still mixed
    rng.shuffle(examples)

    keys = [(e["instruction"], e["input"]) for e in examples]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise SystemExit(f"duplicate examples: {sorted(dupes)[:5]}")
    for e in examples:
        if not e["instruction"].strip() or not e["output"].strip():
            raise SystemExit(f"empty instruction or output: {e}")
    return examples


def render(examples: list[Example]) -> str:
    return json.dumps(examples, ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    parser.add_argument("--out", type=Path, default=OUT_PATH)
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale; run python data/make_demo_sft.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    n = len(json.loads(text))
    print(f"wrote {n} examples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
