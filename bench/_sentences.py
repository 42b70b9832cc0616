"""Real English sentences for the transformer benchmark (bench/transformer_peers.py),
written for it, of varied length (3 to 50 words), so that batches padded to their
longest sentence have different sequence lengths.

``EVAL_PAIRS``: held-out pairs of paraphrases (the second says what the first says in
other words); the embeddings of both halves are compared with the FP32 model's, and a
query (first half) should find its own paraphrase among all second halves.
``TRAIN``: other sentences, on other topics, for calibration and distillation; no
evaluation sentence is among them.
"""

from __future__ import annotations

EVAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing the guitar.", "Someone plays a guitar."),
    ("The children are swimming in the lake behind the old farmhouse.",
     "Kids swim in the lake that lies behind an old farm house."),
    ("It will rain tomorrow.", "Tomorrow there will be rain."),
    ("She forgot her umbrella at the office and got soaked on the way home.",
     "Having left her umbrella at work, she was drenched walking back home."),
    ("The stock market fell sharply after the central bank raised interest rates.",
     "Share prices dropped steeply once the central bank increased interest rates."),
    ("My laptop battery dies after an hour.",
     "The battery of my notebook runs out within an hour."),
    ("The restaurant on the corner serves the best pizza in town, according to almost "
     "everyone who has eaten there at least once.",
     "Nearly everybody who has tried the corner restaurant says its pizza is the finest in "
     "the town."),
    ("Please close the window.", "Could you shut the window?"),
    ("The train to the airport leaves every fifteen minutes from platform two.",
     "Airport trains depart from platform two four times an hour."),
    ("He has been learning Japanese for three years and can now read a newspaper.",
     "After three years of studying Japanese he is able to read the paper."),
    ("A small dog is chasing a red ball across the grass.",
     "A little dog runs after a red ball on the lawn."),
    ("The museum is closed on Mondays.", "On Mondays the museum does not open."),
    ("Scientists discovered a new species of frog in the rain forests of Ecuador, hidden "
     "among leaves on the forest floor.",
     "Researchers found a previously unknown frog species living in the leaf litter of "
     "Ecuador's rain forest."),
    ("The meeting has been moved to Thursday afternoon.",
     "We rescheduled the meeting for Thursday after lunch."),
    ("Drinking enough water during the day helps you stay focused.",
     "Staying hydrated through the day makes it easier to concentrate."),
    ("The bridge was closed for repairs, so we had to take a long detour through the "
     "mountains and arrived two hours late.",
     "Because the bridge was shut for maintenance we drove a long way around over the "
     "mountains and got there two hours behind schedule."),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("Our team won the championship for the first time in twenty years.",
     "For the first time in two decades our team took the title."),
    ("This recipe needs two eggs, a cup of flour and a pinch of salt.",
     "You will need a pinch of salt, one cup of flour and a couple of eggs for this dish."),
    ("The software update fixed the bug that made the application crash on startup.",
     "After the update the program no longer crashes when it starts."),
    ("She is the tallest girl in her class.", "No one in her class is taller than her."),
    ("The farmers are worried that the long drought will ruin this year's harvest of wheat "
     "and corn.",
     "Growers fear the extended dry spell will destroy this season's wheat and maize crops."),
    ("I can't find my keys anywhere.", "My keys are nowhere to be found."),
    ("The concert was cancelled because the singer fell ill.",
     "The show was called off since the vocalist got sick."),
    ("Electric cars are becoming cheaper as battery prices continue to fall around the "
     "world, and many countries now offer tax breaks to buyers.",
     "With batteries getting less expensive worldwide, electric vehicles cost less, and "
     "numerous nations give buyers tax incentives."),
    ("The library lends books for three weeks.", "You may borrow a library book for three weeks."),
    ("He apologised for arriving late to the interview.",
     "He said he was sorry for being late to the job interview."),
    ("A woman is slicing an onion in the kitchen.", "In the kitchen a lady cuts an onion."),
    ("The hotel room had a beautiful view of the harbour and the boats.",
     "From the hotel room you could see the harbour and its boats, which looked lovely."),
    ("The price of coffee has doubled since last spring.",
     "Coffee costs twice what it did last spring."),
    ("Volunteers planted more than a thousand trees along the river to prevent the banks "
     "from washing away during floods.",
     "Over a thousand trees were planted beside the river by volunteers so that floods "
     "would not erode its banks."),
    ("Turn left at the second traffic light.", "At the second set of lights, go left."),
)

TRAIN: tuple[str, ...] = (
    "The committee will publish its final report next month.",
    "Birds migrate south when the days grow shorter.",
    "He poured himself a cup of tea and sat down by the fire to read the letter that had "
    "arrived that morning.",
    "Water boils at a lower temperature on a high mountain.",
    "The city council approved a plan to build new bicycle lanes downtown.",
    "Open the door.",
    "Most of the passengers slept through the night flight.",
    "A good night's sleep improves memory and mood.",
    "The old lighthouse has guided ships into the bay for more than a century, and it is "
    "still working today.",
    "Prices at the market rose after the storm.",
    "The students presented their projects to a panel of judges.",
    "She painted the fence white.",
    "Our neighbours are moving to Canada in the summer.",
    "The detective noticed that the clock on the wall had stopped at exactly ten past "
    "three.",
    "Vegetables grow faster in warm, moist soil.",
    "The printer is out of paper again.",
    "Thousands of fans gathered outside the stadium hours before the final match began.",
    "He fixed the bicycle chain with a pair of pliers.",
    "The company hired fifty new engineers this year.",
    "Snow covered the village overnight.",
    "Reading aloud to young children helps them learn new words and enjoy stories.",
    "The museum's new exhibition shows paintings from the early twentieth century, many of "
    "which have never been displayed in public before.",
    "Wash your hands before dinner.",
    "The ferry crosses the strait twice a day in winter.",
    "Our internet connection was slow all weekend.",
    "The orchestra rehearsed the symphony for weeks.",
    "A strong wind knocked over several trees in the park.",
    "She wrote her first novel while working nights at a hospital.",
    "The recipe calls for fresh basil and ripe tomatoes.",
    "Engineers tested the bridge by driving heavy trucks across it.",
    "The baby finally fell asleep.",
    "Tourists crowd the narrow streets of the old town every summer, looking for souvenirs "
    "and ice cream.",
    "The river flooded the fields after a week of heavy rain.",
    "He lost his wallet on the bus.",
    "Solar panels on the roof provide most of the building's electricity.",
    "The teacher asked everyone to hand in their essays by Friday.",
    "Our flight was delayed by fog.",
    "A volcano erupted on the island, sending ash high into the sky and forcing airlines to "
    "cancel hundreds of flights across the region.",
    "The shop sells fresh bread every morning.",
    "They played chess in the garden until it got dark.",
    "The doctor recommended more exercise and less sugar.",
    "Many ancient roads built by the Romans are still in use.",
    "The kettle is broken.",
    "Children learn languages more easily than adults do.",
    "The factory closed after sixty years, and most of the workers found jobs in the new "
    "warehouses outside town.",
    "The phone rang twice and then stopped.",
    "A heavy fog rolled in from the sea.",
    "The scientists measured the temperature of the ocean at different depths.",
    "My grandmother grows roses in her back garden.",
    "The new law requires companies to report their carbon emissions every year.",
    "He ran the marathon in under four hours.",
    "The crowd cheered as the rocket lifted off.",
    "Turn off the lights when you leave the room.",
    "Their house is at the end of a long gravel road, surrounded by fields of sunflowers "
    "that bloom in late July.",
    "The museum guide spoke three languages.",
    "We ordered soup, salad and a large plate of noodles.",
    "The hikers reached the summit just before sunrise.",
    "Rain is expected later tonight.",
    "The bakery on Main Street has been owned by the same family for four generations.",
    "Her favourite subject at school was chemistry.",
    "A gentle breeze moved the curtains.",
    "The government announced new funding for rural schools and hospitals.",
    "He keeps a diary of everything he eats.",
    "The bus was full, so we walked.",
    "Astronomers observed a comet passing close to the sun, its long tail glowing brightly "
    "for several nights.",
    "The carpenter measured the table twice before cutting the wood.",
    "Fresh snow makes the mountain roads dangerous.",
    "She answered every question correctly.",
    "The festival attracts musicians from all over the world.",
    "Our dog barks at every delivery van that passes the house.",
    "The power went out during the storm.",
    "Learning to cook simple meals at home can save a lot of money over a year, and it is "
    "often healthier than eating out.",
    "The sailors repaired the torn sail at sea.",
    "Bees are essential for pollinating many crops.",
    "The exam starts at nine.",
    "He borrowed his brother's car for the weekend.",
    "The streets were quiet on Sunday morning.",
    "The report found that air pollution in the capital had fallen by a third since the "
    "ban on old diesel vehicles.",
    "Owls hunt mostly at night.",
    "The waiter brought us the wrong order.",
    "A new supermarket opened near the station.",
    "They spent the afternoon building sandcastles on the beach.",
    "The mechanic said the brakes needed replacing.",
    "Spring arrived early this year.",
    "The architect designed the school so that every classroom gets natural light in the "
    "morning.",
    "She speaks quietly but everyone listens.",
    "The team celebrated with pizza after the game.",
    "Please sign the form and return it by email.",
    "Fishermen left the harbour before dawn.",
    "The writer spent ten years researching the history of the silk trade between China "
    "and Europe.",
    "Leaves turn red and gold in the autumn.",
    "The elevator is out of order.",
    "My brother collects old coins and stamps.",
    "The hospital opened a new wing for children.",
    "We watched the sunset from the top of the hill.",
)
